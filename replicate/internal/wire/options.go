package wire

// ReaderOptions configure a [Reader]; nil or the zero value gives
// the defaults.
type ReaderOptions struct {
	// MaxFrame is the largest payload accepted; zero means
	// DefaultMaxFrame.
	MaxFrame int
}
