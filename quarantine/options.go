package quarantine

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/resilmail/resilmail"
)

// Options configure a Store. The zero value (or nil) gives the defaults
// documented on each field.
type Options struct {
	// Logger receives a line per stored, released, deleted and expired
	// entry and per error; nil means slog.Default().
	Logger *slog.Logger

	// Deliverer re-injects released messages (for example a queue, which
	// treats a repeated envelope id as a no-op). Nil means Release fails
	// with an error and nothing changes.
	Deliverer resilmail.Deliverer

	// MaxAge is how long an entry is kept, counted from Entry.Time; older
	// entries are removed with their metadata. Zero means 14 days.
	MaxAge time.Duration

	// QuotaCount and QuotaBytes limit what one recipient holds: when a
	// recipient has more held entries (or more bytes of held bodies), its
	// oldest held entries expire. Zero means 10,000 entries and no byte
	// limit; negative means no limit.
	QuotaCount int
	QuotaBytes int64

	// MaxSize is the largest body stored. Zero means 64 MiB.
	MaxSize int64

	// MaxEntries caps the entries the whole store holds: a new entry
	// beyond it is refused with ErrFull until expiry or deletion makes
	// room. Zero means 1,000,000; negative means no cap.
	MaxEntries int64

	// ExpireEvery is how often Run expires entries and retries unfinished
	// releases. Zero means 5 minutes.
	ExpireEvery time.Duration

	// Now returns the current time; nil means time.Now. Tests set it.
	Now func() time.Time
}

func (o *Options) withDefaults() (Options, error) {
	var out Options
	if o != nil {
		out = *o
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	if out.MaxAge == 0 {
		out.MaxAge = 14 * 24 * time.Hour
	}
	if out.MaxAge < 0 {
		return out, fmt.Errorf("quarantine: negative MaxAge %v", out.MaxAge)
	}
	if out.QuotaCount == 0 {
		out.QuotaCount = 10000
	}
	if out.MaxSize == 0 {
		out.MaxSize = 64 << 20
	}
	if out.MaxEntries == 0 {
		out.MaxEntries = 1_000_000
	}
	if out.MaxSize < 0 {
		return out, fmt.Errorf("quarantine: negative MaxSize %d", out.MaxSize)
	}
	if out.ExpireEvery == 0 {
		out.ExpireEvery = 5 * time.Minute
	}
	if out.ExpireEvery < 0 {
		return out, fmt.Errorf("quarantine: negative ExpireEvery %v", out.ExpireEvery)
	}
	if out.Now == nil {
		out.Now = time.Now
	}
	return out, nil
}
