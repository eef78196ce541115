package store

// SetLoadKickBytes sets how many bytes a load writes between two starts of
// write-back, and returns a function that sets it back.
func SetLoadKickBytes(n int64) func() {
	old := loadKickBytes
	loadKickBytes = n
	return func() { loadKickBytes = old }
}
