package apptype

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/tailscale/hujson"
)

// This file holds the syntax layer of policy files: reading HuJSON (JSON
// with comments and trailing commas, the syntax of Tailscale policy files)
// with github.com/tailscale/hujson, walking JSON values while tracking file
// offsets, and the top-level layouts ({"apps": ...} and Tailscale policy
// files) in which the app lists of policy.go are found.

// standardize returns data as standard JSON: hujson blanks every comment
// and trailing comma with spaces, so byte offsets, lines and columns in the
// result are those of data. A HuJSON syntax error is a *PolicyError at its
// line and column.
func (ps *policyParser) standardize(data []byte) ([]byte, error) {
	// hujson wants a line comment to end with a newline; a file's last
	// line may not. The byte added after the end moves nothing.
	clean, err := hujson.Standardize(append(slices.Clone(data), '\n'))
	if err == nil {
		return clean[:len(data)], nil
	}
	e := &PolicyError{File: ps.file, Line: 1, Col: 1, Err: err}
	// hujson names the place as "hujson: line L, column C: <what>".
	if _, serr := fmt.Sscanf(err.Error(), "hujson: line %d, column %d:", &e.Line, &e.Col); serr == nil {
		if inner := errors.Unwrap(err); inner != nil {
			e.Err = inner
		}
	}
	// The newline added is not in the file: an error there is at its end.
	off := min(offsetOf(data, e.Line, e.Col), len(data))
	e.Line, e.Col = lineCol(data, off)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		// Say which construct the file ended in, in the words of
		// encoding/json where it is not a comment.
		e.Err = errors.New("unexpected end of JSON input")
		if bytes.HasPrefix(data[off:], []byte("/*")) {
			e.Err = errors.New(`block comment "/*" is never closed with "*/"`)
		}
	}
	return nil, e
}

// offsetOf converts a 1-based line and byte column in data to an offset.
func offsetOf(data []byte, line, col int) int {
	off := 0
	for ; line > 1; line-- {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			return len(data)
		}
		off += i + 1
	}
	return off + col - 1
}

// parseTopObject parses a top-level object m: {"apps": [...]} or a
// Tailscale policy file.
func (ps *policyParser) parseTopObject(l *appList, m jsonMember) error {
	var apps, nodeAttrs *jsonMember
	var others []jsonMember
	err := ps.eachValue(nil, m.val, m.valOff, func(e jsonMember) error {
		var slot **jsonMember
		switch {
		case e.key == "apps":
			slot = &apps
		case e.key == "nodeAttrs":
			slot = &nodeAttrs
		case strings.EqualFold(e.key, "apps"):
			return ps.errAt(e.keyOff, nil, e.key, "", errors.New(`unknown key (did you mean "apps"?)`))
		case strings.EqualFold(e.key, "nodeAttrs"):
			return ps.errAt(e.keyOff, nil, e.key, "", errors.New(`unknown key (did you mean "nodeAttrs"?)`))
		default:
			others = append(others, e)
			return nil
		}
		if *slot != nil {
			line, _ := lineCol(ps.data, (*slot).keyOff)
			return ps.errAt(e.keyOff, nil, e.key, "", fmt.Errorf("duplicate key (first on line %d)", line))
		}
		*slot = &e
		return nil
	})
	switch {
	case err != nil:
		return err
	case apps == nil && nodeAttrs == nil:
		return nil // a Tailscale policy file without app connectors
	case apps == nil:
		l.mergeEqual = true
		return ps.parseNodeAttrs(l, *nodeAttrs)
	case nodeAttrs != nil:
		later := max(apps.keyOff, nodeAttrs.keyOff)
		return ps.errAt(later, nil, "", "", errors.New(
			`both "apps" and "nodeAttrs": use either {"apps": [...]} or a Tailscale policy file, not both`))
	case len(others) > 0:
		return ps.errAt(others[0].keyOff, nil, others[0].key, "",
			errors.New(`unknown key (an object with "apps" has no other key)`))
	}
	return ps.parseAppList(l, *apps)
}

// Keys read from the entries of a Tailscale policy file's "nodeAttrs".
const (
	nodeAttrApp      = "app"
	appConnectorsCap = "tailscale.com/app-connectors"
)

// parseNodeAttrs collects the apps of the "nodeAttrs" list m of a Tailscale
// policy file.
func (ps *policyParser) parseNodeAttrs(l *appList, m jsonMember) error {
	switch m.val[0] {
	case 'n':
		return nil
	case '[':
	default:
		return ps.errAt(m.valOff, nil, m.key, "", fmt.Errorf("want a list of objects, got %s", jsonKind(m.val)))
	}
	index := 0
	return ps.eachValue(nil, m.val, m.valOff, func(e jsonMember) error {
		index++
		if e.val[0] != '{' {
			return ps.errAt(e.valOff, nil, m.key, "", fmt.Errorf("entry #%d: want an object, got %s", index, jsonKind(e.val)))
		}
		app, err := ps.member(e, nodeAttrApp)
		if err != nil || app == nil || app.val[0] == 'n' {
			return err
		}
		if app.val[0] != '{' {
			return ps.errAt(app.valOff, nil, app.key, "", fmt.Errorf("want an object, got %s", jsonKind(app.val)))
		}
		list, err := ps.member(*app, appConnectorsCap)
		if err != nil || list == nil {
			return err
		}
		return ps.parseAppList(l, *list)
	})
}

// jsonMember is one key and value of a JSON object, with their offsets.
type jsonMember struct {
	key    string
	keyOff int
	valOff int
	val    json.RawMessage
}

// member returns the member named key of the JSON object in m, or nil if
// there is none. A repeated key is an error.
func (ps *policyParser) member(m jsonMember, key string) (*jsonMember, error) {
	var found *jsonMember
	err := ps.eachValue(nil, m.val, m.valOff, func(e jsonMember) error {
		if e.key != key {
			return nil
		}
		if found != nil {
			line, _ := lineCol(ps.data, found.keyOff)
			return ps.errAt(e.keyOff, nil, e.key, "", fmt.Errorf("duplicate key (first on line %d)", line))
		}
		found = &e
		return nil
	})
	return found, err
}

// stringValue decodes m's value, a JSON string; ok is false if it is null.
func (ps *policyParser) stringValue(st *appState, m jsonMember) (s string, ok bool, err error) {
	switch m.val[0] {
	case 'n':
		return "", false, nil
	case '"':
	default:
		return "", false, ps.errAt(m.valOff, st, m.key, "", wantString(m.val))
	}
	if err := json.Unmarshal(m.val, &s); err != nil {
		return "", false, ps.errAt(m.valOff, st, m.key, "", err)
	}
	return s, true, nil
}

// eachString calls fn with the offset and value of each element of the list
// of strings in m. A null value is an empty list.
func (ps *policyParser) eachString(st *appState, m jsonMember, fn func(off int, s string) error) error {
	switch m.val[0] {
	case 'n':
		return nil
	case '[':
	default:
		return ps.errAt(m.valOff, st, m.key, "",
			fmt.Errorf("want a list of strings, got %s %s", jsonKind(m.val), excerpt(string(m.val))))
	}
	index := 0
	return ps.eachValue(st, m.val, m.valOff, func(e jsonMember) error {
		index++
		if e.val[0] != '"' {
			return ps.errAt(e.valOff, st, m.key, "", fmt.Errorf("entry #%d: %w", index, wantString(e.val)))
		}
		var s string
		if err := json.Unmarshal(e.val, &s); err != nil {
			return ps.errAt(e.valOff, st, m.key, "", err)
		}
		return fn(e.valOff, s)
	})
}

// eachValue calls fn with each element of the JSON array, or each member of
// the JSON object, raw, which starts at file offset base and must be valid
// JSON. Array elements have an empty key and keyOff equal to valOff.
func (ps *policyParser) eachValue(st *appState, raw []byte, base int, fn func(jsonMember) error) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	if _, err := dec.Token(); err != nil { // '[' or '{'
		return ps.errAt(base, st, "", "", err)
	}
	for dec.More() {
		var m jsonMember
		m.keyOff = base + skipJSONSpace(raw, int(dec.InputOffset()))
		if raw[0] == '{' {
			tok, err := dec.Token()
			if err != nil {
				return ps.errAt(m.keyOff, st, "", "", err)
			}
			m.key, _ = tok.(string) // object keys are always strings
		}
		m.valOff = base + skipJSONSpace(raw, int(dec.InputOffset()))
		if err := dec.Decode(&m.val); err != nil {
			return ps.errAt(m.valOff, st, m.key, "", err)
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// lineCol converts a byte offset in data to a 1-based line and byte column.
// Offsets past the end refer to the position just after the last byte.
func lineCol(data []byte, off int) (line, col int) {
	off = min(max(off, 0), len(data))
	before := data[:off]
	line = 1 + bytes.Count(before, []byte{'\n'})
	col = off - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

// skipJSONSpace returns the offset of the first byte at or after i in data
// that is not JSON white space or a ',' or ':' separator.
func skipJSONSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n', ',', ':':
			i++
		default:
			return i
		}
	}
	return i
}

// jsonKinds maps the first byte of a JSON value to the kind of value;
// anything else starts a number.
var jsonKinds = map[byte]string{'"': "string", '{': "object", '[': "array", 't': "boolean", 'f': "boolean", 'n': "null"}

// jsonKind names the kind of the JSON value raw.
func jsonKind(raw []byte) string {
	if k, ok := jsonKinds[raw[0]]; ok {
		return k
	}
	return "number"
}

// wantString returns the error for a non-string JSON value raw.
func wantString(raw []byte) error {
	return fmt.Errorf("want a string, got %s %s", jsonKind(raw), excerpt(string(raw)))
}

// excerpt shortens s for display in an error message.
func excerpt(s string) string {
	const maxLen = 80
	if len(s) <= maxLen {
		return s
	}
	i := maxLen
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}
