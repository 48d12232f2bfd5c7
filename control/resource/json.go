package resource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// maxDepth bounds the nesting of a document. The deepest field of these resources is at depth
// 7 (spec.ingress[0].destination.serviceAccounts.names[0]); the bound only stops hostile input
// from recursing without end.
const maxDepth = 32

type jsonKind uint8

const (
	jsonNull jsonKind = iota
	jsonBool
	jsonNumber
	jsonString
	jsonArray
	jsonObject
)

// jsonValue is a parsed JSON value that keeps what encoding/json's generic decoding loses: the
// order of an object's members (for errors in document order) and a number's literal (so that
// 80.0 is not taken for the integer 80).
type jsonValue struct {
	kind    jsonKind
	text    string // a string's value, a number's literal, "true" or "false"
	items   []*jsonValue
	members []jsonMember
}

type jsonMember struct {
	key   string
	value *jsonValue
}

// describe names a value for an error message: "a string", "the number 80.5", ...
func (v *jsonValue) describe() string {
	switch v.kind {
	case jsonNull:
		return "null"
	case jsonBool:
		return v.text
	case jsonNumber:
		return "the number " + v.text
	case jsonString:
		return "a string"
	case jsonArray:
		return "a list"
	default:
		return "an object"
	}
}

// parseJSON reads one JSON document. A duplicate member of an object is recorded in errs (the
// first one is kept); any other problem makes the document unreadable and is returned.
func parseJSON(doc []byte, errs *errList) (*jsonValue, error) {
	p := jsonParser{dec: json.NewDecoder(bytes.NewReader(doc)), errs: errs}
	p.dec.UseNumber()
	v, err := p.value("", 0)
	if errors.Is(err, io.EOF) {
		return nil, errors.New("empty document")
	}
	if err != nil {
		return nil, describeSyntax(err)
	}
	if _, err := p.dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("data after the JSON document at byte %d", p.dec.InputOffset())
	}
	return v, nil
}

func describeSyntax(err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d: %s", se.Offset, se.Error())
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("invalid JSON: unexpected end of the document")
	}
	return err
}

type jsonParser struct {
	dec  *json.Decoder
	errs *errList
}

func (p *jsonParser) value(at path, depth int) (*jsonValue, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case nil:
		return &jsonValue{kind: jsonNull}, nil
	case bool:
		return &jsonValue{kind: jsonBool, text: fmt.Sprint(t)}, nil
	case json.Number:
		return &jsonValue{kind: jsonNumber, text: string(t)}, nil
	case string:
		return &jsonValue{kind: jsonString, text: t}, nil
	case json.Delim:
		if depth >= maxDepth {
			return nil, fmt.Errorf("the document is nested more than %d levels deep, at %s", maxDepth, at)
		}
		if t == '[' {
			return p.array(at, depth)
		}
		return p.object(at, depth)
	}
	return nil, fmt.Errorf("unexpected JSON token %v", tok)
}

func (p *jsonParser) array(at path, depth int) (*jsonValue, error) {
	v := &jsonValue{kind: jsonArray}
	for p.dec.More() {
		item, err := p.value(at.index(len(v.items)), depth+1)
		if err != nil {
			return nil, err
		}
		v.items = append(v.items, item)
	}
	_, err := p.dec.Token() // ']'
	return v, err
}

func (p *jsonParser) object(at path, depth int) (*jsonValue, error) {
	v := &jsonValue{kind: jsonObject}
	seen := make(map[string]bool)
	for p.dec.More() {
		tok, err := p.dec.Token()
		if err != nil {
			return nil, err
		}
		key := tok.(string) // the decoder allows nothing else here
		val, err := p.value(at.child(key), depth+1)
		if err != nil {
			return nil, err
		}
		if seen[key] {
			p.errs.addf(at.child(key), "duplicate field")
			continue
		}
		seen[key] = true
		v.members = append(v.members, jsonMember{key, val})
	}
	_, err := p.dec.Token() // '}'
	return v, err
}
