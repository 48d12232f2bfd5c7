package selector

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

const (
	// MaxLength is the maximum length in bytes of a selector, both as
	// given to Parse and in canonical form.
	MaxLength = 16 << 10

	// MaxDepth is the maximum nesting depth of parentheses in a selector.
	// It is large enough for every selector of up to 1024 bytes (the
	// longest selector Calico's API accepts) and bounds recursion on
	// untrusted input.
	MaxDepth = 512

	// MaxKeyLength is the maximum length in bytes of a label key, as in
	// Calico's selector tokenizer.
	MaxKeyLength = 512
)

// NamespaceLabel is the label that carries the namespace of a namespaced
// entity, as Calico's projectcalico.org/namespace does. global() matches
// exactly the label sets without it.
const NamespaceLabel = "projectcalico.org/namespace"

// ParseError describes a syntax error in a selector.
type ParseError struct {
	Input string // the selector being parsed
	Pos   int    // byte offset in Input of the problem
	Msg   string // description of the problem
}

// maxShownInput bounds how much of the input Error includes.
const maxShownInput = 120

// Error returns a one-line description of the form
//
//	selector "app == web": position 7: expected a quoted string, found "web"
//
// Very long inputs are abbreviated.
func (e *ParseError) Error() string {
	return fmt.Sprintf("selector %s: position %d: %s", quoteTrunc(e.Input, maxShownInput), e.Pos, e.Msg)
}

// quoteTrunc returns s in Go quoted form, abbreviated with "..." if it is
// longer than max bytes.
func quoteTrunc(s string, max int) string {
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q...", s[:cut])
}

// MustParse is like Parse but panics if the selector cannot be parsed. It is
// intended for selectors that are constants in the program.
func MustParse(s string) Selector {
	sel, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return sel
}

// Parse parses a selector; see the package documentation for the syntax.
// An empty (or all-blank) string yields a selector matching everything.
// Errors are of type *ParseError.
func Parse(s string) (Selector, error) {
	if len(s) > MaxLength {
		return Selector{}, &ParseError{Input: s, Pos: MaxLength,
			Msg: fmt.Sprintf("selector is %d bytes long, more than the maximum of %d", len(s), MaxLength)}
	}
	p := &parser{in: s}
	p.tok = p.lexAt(0)
	var root node
	if p.tok.kind == tEOF {
		root = &allNode{}
	} else {
		var err error
		root, err = p.parseOr()
		if err != nil {
			return Selector{}, err
		}
		switch p.tok.kind {
		case tEOF:
		case tRParen:
			return Selector{}, p.errAt(p.tok.pos, `unmatched ")"`)
		default:
			return Selector{}, p.unexpected(p.tok, `"&&", "||" or end of input`)
		}
	}
	return newSelector(root, p)
}

type tokKind int

const (
	tEOF    tokKind = iota
	tErr            // lexical error; msg describes it
	tWord           // label key or keyword; text holds it
	tString         // string literal; text holds the value without quotes
	tEq             // ==
	tNe             // !=
	tNot            // !
	tAnd            // &&
	tOr             // ||
	tLParen         // (
	tRParen         // )
	tLBrace         // {
	tRBrace         // }
	tComma          // ,
)

type token struct {
	kind     tokKind
	pos, end int    // byte range in the input
	text     string // tWord, tString: see tokKind
	msg      string // tErr
}

type parser struct {
	in    string
	tok   token // current token
	depth int   // current nesting of "("
}

// isBlank reports whether c separates tokens. As in Calico, only spaces and
// tabs do; a newline is an unexpected character.
func isBlank(c byte) bool { return c == ' ' || c == '\t' }

// isWordChar reports whether c may appear in a label key (or keyword).
func isWordChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '/'
}

// lexAt returns the token starting at or after byte offset pos. It has no
// side effects, so the parser can use it to look ahead.
func (p *parser) lexAt(pos int) token {
	in := p.in
	for pos < len(in) && isBlank(in[pos]) {
		pos++
	}
	if pos >= len(in) {
		return token{kind: tEOF, pos: len(in), end: len(in)}
	}
	sym := func(k tokKind, n int) token { return token{kind: k, pos: pos, end: pos + n} }
	next := byte(0)
	if pos+1 < len(in) {
		next = in[pos+1]
	}
	switch c := in[pos]; {
	case isWordChar(c):
		end := pos + 1
		for end < len(in) && isWordChar(in[end]) {
			end++
		}
		return token{kind: tWord, pos: pos, end: end, text: in[pos:end]}
	case c == '"' || c == '\'':
		i := strings.IndexByte(in[pos+1:], c)
		if i < 0 {
			return token{kind: tErr, pos: pos, end: len(in),
				msg: fmt.Sprintf("unterminated string (missing closing %c)", c)}
		}
		end := pos + 1 + i + 1
		return token{kind: tString, pos: pos, end: end, text: in[pos+1 : end-1]}
	case c == '=' && next == '=':
		return sym(tEq, 2)
	case c == '!' && next == '=':
		return sym(tNe, 2)
	case c == '!':
		return sym(tNot, 1)
	case c == '&' && next == '&':
		return sym(tAnd, 2)
	case c == '|' && next == '|':
		return sym(tOr, 2)
	case c == '(':
		return sym(tLParen, 1)
	case c == ')':
		return sym(tRParen, 1)
	case c == '{':
		return sym(tLBrace, 1)
	case c == '}':
		return sym(tRBrace, 1)
	case c == ',':
		return sym(tComma, 1)
	case c == '=' || c == '&' || c == '|':
		return token{kind: tErr, pos: pos, end: pos + 1,
			msg: fmt.Sprintf("unexpected %q (did you mean %q?)", string(c), string(c)+string(c))}
	case c == '\n' || c == '\r' || c == '\v' || c == '\f':
		return token{kind: tErr, pos: pos, end: pos + 1,
			msg: fmt.Sprintf("unexpected character %q (only spaces and tabs may separate tokens)", string(c))}
	default:
		_, n := utf8.DecodeRuneInString(in[pos:])
		return token{kind: tErr, pos: pos, end: pos + n,
			msg: fmt.Sprintf("unexpected character %q", in[pos:pos+n])}
	}
}

func (p *parser) advance() { p.tok = p.lexAt(p.tok.end) }

func (p *parser) errAt(pos int, msg string) *ParseError {
	return &ParseError{Input: p.in, Pos: pos, Msg: msg}
}

// describe returns a short description of t for error messages.
func (p *parser) describe(t token) string {
	switch t.kind {
	case tEOF:
		return "end of input"
	case tString:
		raw := p.in[t.pos:t.end]
		if len(raw) > 40 {
			raw = raw[:36] + "..." + raw[len(raw)-1:]
		}
		return "string " + raw
	default:
		return quoteTrunc(p.in[t.pos:t.end], 40)
	}
}

// unexpected returns an error for finding t where want was expected. A
// lexical error token is reported as itself.
func (p *parser) unexpected(t token, want string) *ParseError {
	if t.kind == tErr {
		return p.errAt(t.pos, t.msg)
	}
	return p.errAt(t.pos, fmt.Sprintf("expected %s, found %s", want, p.describe(t)))
}

// expect checks that the current token has kind k and consumes it.
func (p *parser) expect(k tokKind, want string) (token, error) {
	t := p.tok
	if t.kind != k {
		return t, p.unexpected(t, want)
	}
	p.advance()
	return t, nil
}

// parseOr parses  and ("||" and)* .
func (p *parser) parseOr() (node, error) {
	x, err := p.parseAnd()
	if err != nil || p.tok.kind != tOr {
		return x, err
	}
	or := &orNode{terms: []node{x}}
	for p.tok.kind == tOr {
		p.advance()
		y, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		or.terms = append(or.terms, y)
	}
	return or, nil
}

// parseAnd parses  unary ("&&" unary)* .
func (p *parser) parseAnd() (node, error) {
	x, err := p.parseUnary()
	if err != nil || p.tok.kind != tAnd {
		return x, err
	}
	and := &andNode{terms: []node{x}}
	for p.tok.kind == tAnd {
		p.advance()
		y, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		and.terms = append(and.terms, y)
	}
	return and, nil
}

// parseUnary parses  "!"* primary . As in Calico, a run of "!" counts only
// by its parity: "!!has(a)" is has(a). A negation of a parenthesised
// negation cancels too ("!(!has(a))" is has(a)), which Calico's parser
// leaves as a double negation that prints as "!!has(a)" (and so reparses
// as has(a)); see the package documentation.
func (p *parser) parseUnary() (node, error) {
	neg := false
	for p.tok.kind == tNot {
		neg = !neg
		p.advance()
	}
	x, err := p.parsePrimary()
	if err != nil || !neg {
		return x, err
	}
	if n, ok := x.(*notNode); ok {
		return n.x, nil
	}
	return &notNode{x}, nil
}

// parsePrimary parses
//
//	"(" or ")" | "all(" ")" | "global(" ")" | "has(" key ")" |
//	key ("==" | "!=" | "contains" | "starts with" | "ends with") string |
//	key ("in" | "not in") set
//
// where the keywords all, global and has must be followed directly by "(",
// with no blank in between.
func (p *parser) parsePrimary() (node, error) {
	t := p.tok
	switch t.kind {
	case tLParen:
		p.depth++
		if p.depth > MaxDepth {
			return nil, p.errAt(t.pos, fmt.Sprintf("selector nested too deeply (more than %d levels of parentheses)", MaxDepth))
		}
		p.advance()
		x, err := p.parseOr()
		if err != nil {
			return nil, err
		}
		if _, err := p.expect(tRParen, fmt.Sprintf(`")" to close "(" at position %d`, t.pos)); err != nil {
			return nil, err
		}
		p.depth--
		return x, nil
	case tWord:
	default:
		return nil, p.unexpected(t, "an expression")
	}

	if t.end < len(p.in) && p.in[t.end] == '(' {
		switch t.text {
		case "all", "global", "has":
			p.advance() // keyword
			p.advance() // (
			var x node
			switch t.text {
			case "all":
				x = &allNode{}
			case "global":
				x = &globalNode{}
			case "has":
				key, err := p.parseKey()
				if err != nil {
					return nil, err
				}
				x = &hasNode{key}
			}
			if _, err := p.expect(tRParen, fmt.Sprintf(`")" to close "%s(" at position %d`, t.text, t.pos)); err != nil {
				return nil, err
			}
			return x, nil
		}
	}

	key, err := p.parseKey()
	if err != nil {
		return nil, err
	}
	op := p.tok
	if op.kind == tLParen && (key == "all" || key == "has" || key == "global") {
		return nil, p.errAt(op.pos, fmt.Sprintf(`no blank allowed between %q and "("`, key))
	}
	var kind cmpKind
	switch {
	case op.kind == tEq:
		kind = cmpEq
	case op.kind == tNe:
		kind = cmpNe
	case op.kind != tWord:
		return nil, p.unexpected(op, opsWanted)
	case op.text == "contains":
		kind = cmpContains
	case op.text == "startswith":
		kind = cmpStartsWith
	case op.text == "endswith":
		kind = cmpEndsWith
	case op.text == "starts" || op.text == "ends":
		w := p.lexAt(op.end)
		if w.kind != tWord || w.text != "with" {
			return nil, p.unexpected(w, fmt.Sprintf(`"with" after %q`, op.text))
		}
		p.tok = w // the operator ends with "with", which p.advance below skips
		kind = cmpStartsWith
		if op.text == "ends" {
			kind = cmpEndsWith
		}
	case op.text == "in" || op.text == "notin":
		return p.parseIn(key, op.text == "notin")
	case op.text == "not":
		p.advance()
		if p.tok.kind != tWord || p.tok.text != "in" {
			return nil, p.unexpected(p.tok, `"in" after "not"`)
		}
		return p.parseIn(key, true)
	default:
		return nil, p.unexpected(op, opsWanted)
	}
	p.advance()
	s, err := p.expect(tString, "a quoted string")
	if err != nil {
		return nil, err
	}
	return &cmpNode{kind: kind, key: key, val: s.text}, nil
}

const opsWanted = `"==", "!=", "contains", "starts with", "ends with", "in" or "not in" after label key`

// parseIn parses the set after the current token, the last word of "in"
// or "not in".
func (p *parser) parseIn(key string, negated bool) (node, error) {
	p.advance()
	set, err := p.parseSet()
	if err != nil {
		return nil, err
	}
	return &inNode{key: key, set: set, negated: negated}, nil
}

// parseSet parses  "{" [string ("," string)* [","]] "}"  and returns the
// members sorted and deduplicated. As in Calico, a comma may follow the
// last member.
func (p *parser) parseSet() ([]string, error) {
	open, err := p.expect(tLBrace, `"{"`)
	if err != nil {
		return nil, err
	}
	var set []string
	wantMember := true // at the start or after a comma
	for p.tok.kind == tString {
		set = append(set, p.tok.text)
		p.advance()
		wantMember = p.tok.kind == tComma
		if !wantMember {
			break
		}
		p.advance()
	}
	if p.tok.kind != tRBrace {
		want := `","`
		if wantMember {
			want = "a quoted string"
		}
		return nil, p.unexpected(p.tok, fmt.Sprintf(`%s or "}" to close "{" at position %d`, want, open.pos))
	}
	p.advance()
	return sortedSet(set), nil
}

// parseKey parses and validates a label key.
func (p *parser) parseKey() (string, error) {
	t := p.tok
	if t.kind != tWord {
		return "", p.unexpected(t, "a label key")
	}
	if len(t.text) > MaxKeyLength {
		return "", p.errAt(t.pos, fmt.Sprintf("label key %s is %d bytes long, more than the maximum of %d",
			quoteTrunc(t.text, 40), len(t.text), MaxKeyLength))
	}
	p.advance()
	return t.text, nil
}
