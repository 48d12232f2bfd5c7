package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"sigs.k8s.io/yaml"
)

// Doc is one document of an input, as JSON, before it is decoded.
type Doc struct {
	Index int    // 1-based, over the non-empty documents of the input
	Line  int    // the line the YAML document starts on; 0 for JSON
	Data  []byte // the document as JSON; nil when it could not be turned into JSON
	Name  string // best effort, for messages: the name field if it is a string
	Err   error  // set when the document is not a mapping or could not be turned into JSON
}

// Label names the document in a message: document 2 (policy "web"), or, without a name,
// document 2 (starting at line 7), or document 2. kind is what the document holds, "policy".
func (d Doc) Label(kind string) string {
	switch {
	case d.Name != "":
		return fmt.Sprintf("document %d (%s %q)", d.Index, kind, d.Name)
	case d.Line > 0:
		return fmt.Sprintf("document %d (starting at line %d)", d.Index, d.Line)
	}
	return fmt.Sprintf("document %d", d.Index)
}

// NotMappingError is a Doc's Err when the document is not a mapping (a JSON object).
type NotMappingError struct {
	// Found says what the document is instead: "a list", `a string "web"`, "42", "nothing".
	Found string
}

func (e *NotMappingError) Error() string { return "want a mapping, found " + e.Found }

// Split reads the documents of an input: JSON (one object, several, or an array of objects) or
// YAML (documents separated by --- lines, each a mapping or a sequence of mappings). A leading
// UTF-8 byte order mark is dropped. The error is for input that is not JSON at all (a syntax
// error, with its line and column); a document that is wrong on its own is returned with its Err
// set, so that a caller can report every wrong document. Empty documents (nothing, or comments
// only, or null) are skipped.
func Split(input []byte) ([]Doc, error) {
	input = bytes.TrimPrefix(input, []byte("\xef\xbb\xbf"))
	if looksLikeJSON(input) {
		return splitJSON(input)
	}
	return splitYAML(input), nil
}

// looksLikeJSON tells JSON from YAML: JSON opens with { or [ and then a quoted key, another
// opening bracket or a closing one; YAML flow style such as {name: web} has a bare key.
func looksLikeJSON(input []byte) bool {
	rest := bytes.TrimSpace(input)
	if len(rest) == 0 || (rest[0] != '{' && rest[0] != '[') {
		return false
	}
	rest = bytes.TrimLeft(rest, "[{ \t\r\n")
	return len(rest) == 0 || rest[0] == '"' || rest[0] == '}' || rest[0] == ']'
}

func splitJSON(input []byte) ([]Doc, error) {
	var docs []Doc
	dec := json.NewDecoder(bytes.NewReader(input))
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				line, col := lineCol(input, se.Offset)
				return nil, fmt.Errorf("invalid JSON at line %d, column %d: %w", line, col, err)
			}
			return nil, fmt.Errorf("invalid JSON: %w", err)
		}
		docs = appendDocs(docs, raw, 0)
	}
}

// appendDocs adds a JSON value: an object is one document, an array one per element.
func appendDocs(docs []Doc, raw []byte, line int) []Doc {
	raw = bytes.TrimSpace(raw)
	switch {
	case bytes.Equal(raw, []byte("null")):
		return docs
	case len(raw) > 0 && raw[0] == '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(raw, &elems); err != nil {
			return append(docs, Doc{Index: len(docs) + 1, Line: line, Err: err})
		}
		for _, e := range elems {
			docs = append(docs, newDoc(len(docs)+1, line, e))
		}
		return docs
	}
	return append(docs, newDoc(len(docs)+1, line, raw))
}

func newDoc(index, line int, raw []byte) Doc {
	d := Doc{Index: index, Line: line, Data: raw}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		d.Err = &NotMappingError{Found: jsonKind(raw)}
		return d
	}
	_ = json.Unmarshal(fields["name"], &d.Name)
	return d
}

func jsonKind(raw []byte) string {
	switch raw = bytes.TrimSpace(raw); {
	case len(raw) == 0:
		return "nothing"
	case raw[0] == '[':
		return "a list"
	case raw[0] == '"':
		return "a string " + string(raw)
	}
	return string(raw)
}

// splitYAML splits at lines that are "---" (optionally followed by a comment) or "...", and
// converts each document to JSON; documents holding only comments and blank lines are skipped.
func splitYAML(input []byte) []Doc {
	var docs []Doc
	var cur bytes.Buffer
	start := 1
	flush := func() {
		if strings.TrimSpace(cur.String()) == "" {
			cur.Reset()
			return
		}
		j, err := yaml.YAMLToJSONStrict(cur.Bytes())
		if err != nil {
			docs = append(docs, Doc{Index: len(docs) + 1, Line: start, Err: fmt.Errorf("invalid YAML: %w", err)})
		} else {
			docs = appendDocs(docs, j, start)
		}
		cur.Reset()
	}
	lines := strings.SplitAfter(string(input), "\n")
	for i, l := range lines {
		body := strings.TrimRight(l, "\r\n")
		if rest, ok := strings.CutPrefix(body, "---"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			flush()
			start = i + 2
			if r := strings.TrimSpace(rest); r != "" && r[0] != '#' {
				cur.WriteString(r + "\n") // "--- {name: web}"
				start = i + 1
			}
			continue
		}
		if body == "..." {
			flush()
			start = i + 2
			continue
		}
		if cur.Len() == 0 && strings.TrimSpace(body) == "" {
			start = i + 2
			continue
		}
		cur.WriteString(l)
	}
	flush()
	return docs
}

// lineCol turns a byte offset into a 1-based line and column.
func lineCol(input []byte, offset int64) (line, col int) {
	if offset > int64(len(input)) {
		offset = int64(len(input))
	}
	before := input[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - bytes.LastIndexByte(before, '\n')
	return line, col
}
