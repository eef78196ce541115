package replicate

import "errors"

// ErrBadInventory is wrapped by errors about an [Inventory]'s answers that
// break its contract (UIDs out of range or order, malformed responses of a
// remote inventory).
var ErrBadInventory = errors.New("replicate: bad inventory answer")
