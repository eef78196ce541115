package store

import "github.com/resilmail/resilmail"

// HasBody reports whether the store holds a servable copy of the body d:
// referenced by a message and not marked corrupt. A replica uses it to
// fetch only the bodies it lacks; the answer may be stale by the time the
// caller acts on it, and Apply fetches what it still needs.
func (s *Store) HasBody(d resilmail.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, bad := s.corrupt[d]
	return s.refs[d] > 0 && !bad
}
