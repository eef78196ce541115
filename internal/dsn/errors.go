package dsn

import "errors"

// ErrInvalid is returned, wrapped with the reason, by [Build],
// [Message.Validate] and [Report.Validate] when a notification cannot be
// written as given: no recipient, no Message-ID, a malformed status code, an
// unknown action.
var ErrInvalid = errors.New("dsn: invalid notification")

// ErrNotReport is returned, wrapped with the reason, by [Parse] when the
// message is not a delivery status notification: it is not
// multipart/report, its report-type is not delivery-status, or it has no
// delivery-status part.
var ErrNotReport = errors.New("dsn: not a delivery status notification")

// ErrMalformed is returned, wrapped with the reason, by [Parse] when the
// message claims to be a delivery status notification but cannot be read:
// broken MIME structure, or a delivery-status part without any recipient.
var ErrMalformed = errors.New("dsn: malformed delivery status notification")

// ErrTooLarge is returned by [Parse] when the message is longer than
// [MaxParseSize], or its delivery-status part has more than
// [MaxParseRecipients] recipients.
var ErrTooLarge = errors.New("dsn: notification too large")
