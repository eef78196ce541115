package imapstore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emersion/go-imap/v2"

	"github.com/resilmail/resilmail"
)

// The parse cache file keeps, across restarts, the ENVELOPE and
// BODYSTRUCTURE of the bodies the store's Derived cache held at Close
// (Options.ParseCache): without it the first FETCH ENVELOPE after a
// restart parses every body again. Its format:
//
//	resilmail-imap-structure 1\n
//	{"d":"<SHA-256 of the body, hex>","e":<envelope>,"b":<bodystructure>}\n   (one per body)
//	sha256 <hex of every byte above>\n
//
// It is written to a temporary name, synced and renamed over the old one.
// A file that does not end with its right checksum (torn, damaged, of
// another version) is ignored with a log line: every body is parsed
// again, as if there were none. Bodies never change, so an entry stays
// right for as long as its body exists.

const parseCacheMagic = "resilmail-imap-structure 1\n"

// bsDisk is a BODYSTRUCTURE as JSON (go-imap's is an interface).
type bsDisk struct {
	Single *singleDisk `json:"s,omitempty"`
	Multi  *multiDisk  `json:"m,omitempty"`
}

type singleDisk struct {
	Part imap.BodyStructureSinglePart `json:"p"` // MessageRFC822 in Msg
	Msg  *msgDisk                     `json:"r,omitempty"`
}

type msgDisk struct {
	Envelope *imap.Envelope `json:"e"`
	Body     bsDisk         `json:"b"`
	NumLines int64          `json:"n"`
}

type multiDisk struct {
	Children []bsDisk                        `json:"c"`
	Subtype  string                          `json:"t"`
	Extended *imap.BodyStructureMultiPartExt `json:"x,omitempty"`
}

// maxBodyDepth bounds the nesting of a decoded BODYSTRUCTURE.
const maxBodyDepth = 64

func toDisk(bs imap.BodyStructure) bsDisk {
	switch p := bs.(type) {
	case *imap.BodyStructureSinglePart:
		s := &singleDisk{Part: *p}
		if m := p.MessageRFC822; m != nil {
			s.Part.MessageRFC822 = nil
			s.Msg = &msgDisk{Envelope: m.Envelope, Body: toDisk(m.BodyStructure), NumLines: m.NumLines}
		}
		return bsDisk{Single: s}
	case *imap.BodyStructureMultiPart:
		m := &multiDisk{Subtype: p.Subtype, Extended: p.Extended}
		for _, c := range p.Children {
			m.Children = append(m.Children, toDisk(c))
		}
		return bsDisk{Multi: m}
	}
	return bsDisk{}
}

func fromDisk(d bsDisk, depth int) (imap.BodyStructure, error) {
	if depth > maxBodyDepth {
		return nil, errors.New("body structure nested too deep")
	}
	switch {
	case d.Single != nil:
		p := d.Single.Part
		if m := d.Single.Msg; m != nil {
			inner, err := fromDisk(m.Body, depth+1)
			if err != nil {
				return nil, err
			}
			p.MessageRFC822 = &imap.BodyStructureMessageRFC822{Envelope: m.Envelope, BodyStructure: inner, NumLines: m.NumLines}
		}
		return &p, nil
	case d.Multi != nil:
		m := &imap.BodyStructureMultiPart{Subtype: d.Multi.Subtype, Extended: d.Multi.Extended}
		for _, c := range d.Multi.Children {
			child, err := fromDisk(c, depth+1)
			if err != nil {
				return nil, err
			}
			m.Children = append(m.Children, child)
		}
		if len(m.Children) == 0 {
			return nil, errors.New("multipart without parts")
		}
		return m, nil
	}
	return nil, errors.New("empty body structure")
}

type entryDisk struct {
	Digest   string         `json:"d"`
	Envelope *imap.Envelope `json:"e"`
	Body     bsDisk         `json:"b"`
}

// structureSize is what a structure counts in the store's Derived cache.
func structureSize(bs imap.BodyStructure) int64 {
	size := int64(1024)
	bs.Walk(func(path []int, part imap.BodyStructure) bool { size += 256; return true })
	return size
}

// saveParseCache writes the structures the store holds to path.
func (s *Server) saveParseCache(path string) error {
	var b bytes.Buffer
	b.WriteString(parseCacheMagic)
	enc := json.NewEncoder(&b)
	var err error
	s.st.DerivedValues(structureKey, func(d resilmail.Digest, v any) bool {
		st, ok := v.(*structure)
		if !ok || st.bs == nil {
			return true
		}
		err = enc.Encode(entryDisk{Digest: hex.EncodeToString(d[:]), Envelope: st.env, Body: toDisk(st.bs)})
		return err == nil
	})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b.Bytes())
	fmt.Fprintf(&b, "sha256 %x\n", sum)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// loadParseCache puts the structures saved in path into the store's
// Derived cache; it returns how many. A missing file is no error.
func (s *Server) loadParseCache(path string) (int, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	entries, err := parseParseCache(data)
	if err != nil {
		return 0, fmt.Errorf("imapstore: parse cache %s: %w", path, err)
	}
	for _, e := range entries {
		s.st.PutDerived(e.d, structureKey, e.st, structureSize(e.st.bs))
	}
	return len(entries), nil
}

type cachedStructure struct {
	d  resilmail.Digest
	st *structure
}

// parseParseCache checks and decodes a parse cache file.
func parseParseCache(data []byte) ([]cachedStructure, error) {
	body, ok := bytes.CutPrefix(data, []byte(parseCacheMagic))
	if !ok {
		return nil, errors.New("not a parse cache of this version")
	}
	i := bytes.LastIndex(body[:max(0, len(body)-1)], []byte("\n"))
	var payload, trailer []byte
	if i < 0 {
		payload, trailer = nil, body
	} else {
		payload, trailer = body[:i+1], body[i+1:]
	}
	sum := sha256.Sum256(data[:len(parseCacheMagic)+len(payload)])
	if string(trailer) != fmt.Sprintf("sha256 %x\n", sum) {
		return nil, errors.New("checksum does not match (torn or damaged)")
	}
	var out []cachedStructure
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var e entryDisk
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, err
		}
		raw, err := hex.DecodeString(e.Digest)
		if err != nil || len(raw) != len(resilmail.Digest{}) {
			return nil, fmt.Errorf("bad digest %q", e.Digest)
		}
		bs, err := fromDisk(e.Body, 0)
		if err != nil {
			return nil, err
		}
		if e.Envelope == nil {
			e.Envelope = &imap.Envelope{}
		}
		var d resilmail.Digest
		copy(d[:], raw)
		out = append(out, cachedStructure{d: d, st: &structure{env: e.Envelope, bs: bs}})
	}
	return out, sc.Err()
}
