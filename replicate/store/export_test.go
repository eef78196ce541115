package store

// SetLoadKickBytes sets how many bytes a load writes between two starts of
// write-back, and returns a function that sets it back.
func SetLoadKickBytes(n int64) func() {
	old := loadKickBytes
	loadKickBytes = n
	return func() { loadKickBytes = old }
}

// SetPackTarget sets the size a load fills a pack to, and returns a
// function that sets it back.
func SetPackTarget(n int64) func() {
	old := packTarget
	packTarget = n
	return func() { packTarget = old }
}

// PackFiles returns the number of pack files in the store's folder.
func (s *Store) PackFiles() int {
	ids, _ := s.packIDs()
	return len(ids)
}

// SetUnpackHook sets a function called after each body a scrub moves out
// of a sparse pack, and returns a function that removes it.
func SetUnpackHook(f func()) func() {
	unpackHook = f
	return func() { unpackHook = nil }
}
