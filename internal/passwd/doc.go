// Package passwd reads users and passwords from a passwd-file in Dovecot's
// format and checks logins against it. IMAP, POP3 and (later) submission
// share one file.
//
// # Format
//
// One user a line, fields separated by ':' as in Dovecot's passwd-file
// (https://doc.dovecot.org/configuration_manual/authentication/passwd_file/):
//
//	user@example.com:{SHA512-CRYPT}$6$salt$hash::::::
//	bob:{BLF-CRYPT}$2y$05$...
//	carol:{PLAIN}secret
//	# a comment
//
// Only the first two fields are used: the user name (exactly as the store
// names the user) and the password. The fields after them (uid, gid, gecos,
// home, shell, extra fields) are accepted and ignored. Blank lines and
// lines starting with '#' are skipped. Schemes: {PLAIN} and {CLEARTEXT}
// (the password as is), {BLF-CRYPT} (bcrypt, "$2a$", "$2b$" or "$2y$"),
// {SHA512-CRYPT} (glibc's "$6$" crypt, rounds 1 000 to 1 000 000); a
// password with no scheme is taken by its prefix when it is "$6$" or
// "$2?$" and refused otherwise. A line that cannot be read (no ':', an
// empty or invalid user name, a user twice, an unknown scheme, a malformed
// hash) makes the whole file refused with an error naming the line, never
// the password.
//
// # Reloading
//
// A [File] notices at each [File.Authenticate] (and [File.Reload]) that the
// file changed (size, modification time, inode) and reads it again. A file
// that no longer reads keeps the last good users in force and is logged
// once per change. No goroutine is started.
//
// # Secrets
//
// Passwords and hashes are never logged or returned in errors. Checking a
// PLAIN password takes the same time whatever the guess; an unknown user
// costs a bcrypt check like a known one, so that timing does not tell
// which users exist.
package passwd
