package wire

import "errors"

// ErrFrame is wrapped by every error of a [Reader] about the bytes it
// read: a bad header, a truncated, oversized, corrupt or malformed frame.
var ErrFrame = errors.New("wire: bad stream frame")
