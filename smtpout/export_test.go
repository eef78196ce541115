package smtpout

// DisablePipelining makes d send one command at a time over SMTP, as to a
// server that does not offer PIPELINING, for comparisons.
func DisablePipelining(d *Deliverer) { d.noPipelining = true }
