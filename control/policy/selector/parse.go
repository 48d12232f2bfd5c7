package selector

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

const (
	// MaxLength is the maximum length in bytes of a selector, both as
	// given to Parse and in canonical form.
	MaxLength = 16 << 10

	// MaxDepth is the maximum nesting depth of parentheses and "!"
	// operators in a selector.
	MaxDepth = 64

	maxKeyPrefixLen = 253
	maxKeyNameLen   = 63
)

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
// An empty (or all-whitespace) string yields a selector matching everything.
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

	var b strings.Builder
	root.format(&b)
	if b.Len() > MaxLength {
		return Selector{}, p.errAt(0, fmt.Sprintf("selector is %d bytes long in canonical form, more than the maximum of %d", b.Len(), MaxLength))
	}
	var labels []string
	collectLabels(root, func(k string) { labels = append(labels, k) })
	slices.Sort(labels)
	labels = slices.Clip(slices.Compact(labels))
	return Selector{&parsed{root: root, canon: b.String(), labels: labels}}, nil
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
	depth int   // current nesting of "(" and "!"
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func isWordChar(c byte) bool {
	return isAlnum(c) || c == '-' || c == '_' || c == '.' || c == '/'
}

// lexAt returns the token starting at or after byte offset pos. It has no
// side effects, so the parser can use it to look ahead.
func (p *parser) lexAt(pos int) token {
	in := p.in
	for pos < len(in) && isSpace(in[pos]) {
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

func (p *parser) enter(pos int) error {
	p.depth++
	if p.depth > MaxDepth {
		return p.errAt(pos, fmt.Sprintf("selector nested too deeply (more than %d levels of parentheses and \"!\")", MaxDepth))
	}
	return nil
}

// parseOr parses  and ("||" and)* .
func (p *parser) parseOr() (node, error) {
	x, err := p.parseAnd()
	if err != nil || p.tok.kind != tOr {
		return x, err
	}
	or := &orNode{}
	add := func(x node) {
		if o, ok := x.(*orNode); ok {
			or.terms = append(or.terms, o.terms...)
		} else {
			or.terms = append(or.terms, x)
		}
	}
	add(x)
	for p.tok.kind == tOr {
		p.advance()
		y, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		add(y)
	}
	return or, nil
}

// parseAnd parses  unary ("&&" unary)* .
func (p *parser) parseAnd() (node, error) {
	x, err := p.parseUnary()
	if err != nil || p.tok.kind != tAnd {
		return x, err
	}
	and := &andNode{}
	add := func(x node) {
		if a, ok := x.(*andNode); ok {
			and.terms = append(and.terms, a.terms...)
		} else {
			and.terms = append(and.terms, x)
		}
	}
	add(x)
	for p.tok.kind == tAnd {
		p.advance()
		y, err := p.parseUnary()
		if err != nil {
			return nil, err
		}
		add(y)
	}
	return and, nil
}

// parseUnary parses  "!" unary | primary .
func (p *parser) parseUnary() (node, error) {
	if p.tok.kind != tNot {
		return p.parsePrimary()
	}
	if err := p.enter(p.tok.pos); err != nil {
		return nil, err
	}
	p.advance()
	x, err := p.parseUnary()
	if err != nil {
		return nil, err
	}
	p.depth--
	return &notNode{x}, nil
}

// parsePrimary parses
//
//	"(" or ")" | "all" "(" ")" | "has" "(" key ")" |
//	key ("==" string | "!=" string | "in" set | "not" "in" set)
func (p *parser) parsePrimary() (node, error) {
	t := p.tok
	switch t.kind {
	case tLParen:
		if err := p.enter(t.pos); err != nil {
			return nil, err
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

	if (t.text == "all" || t.text == "has") && p.lexAt(t.end).kind == tLParen {
		p.advance() // keyword
		p.advance() // (
		var x node = &allNode{}
		if t.text == "has" {
			key, err := p.parseKey()
			if err != nil {
				return nil, err
			}
			x = &hasNode{key}
		}
		if _, err := p.expect(tRParen, `")"`); err != nil {
			return nil, err
		}
		return x, nil
	}

	key, err := p.parseKey()
	if err != nil {
		return nil, err
	}
	op := p.tok
	switch {
	case op.kind == tEq || op.kind == tNe:
		p.advance()
		s, err := p.expect(tString, "a quoted string")
		if err != nil {
			return nil, err
		}
		if op.kind == tEq {
			return &eqNode{key, s.text}, nil
		}
		return &neNode{key, s.text}, nil
	case op.kind == tWord && op.text == "in":
		p.advance()
		set, err := p.parseSet()
		if err != nil {
			return nil, err
		}
		return &inNode{key: key, set: set}, nil
	case op.kind == tWord && op.text == "not":
		p.advance()
		if p.tok.kind != tWord || p.tok.text != "in" {
			return nil, p.unexpected(p.tok, `"in" after "not"`)
		}
		p.advance()
		set, err := p.parseSet()
		if err != nil {
			return nil, err
		}
		return &inNode{key: key, set: set, negated: true}, nil
	default:
		return nil, p.unexpected(op, `"==", "!=", "in" or "not in" after label key`)
	}
}

// parseSet parses  "{" [string ("," string)*] "}"  and returns the members
// sorted and deduplicated.
func (p *parser) parseSet() ([]string, error) {
	open, err := p.expect(tLBrace, `"{"`)
	if err != nil {
		return nil, err
	}
	var set []string
	if p.tok.kind == tRBrace {
		p.advance()
		return set, nil
	}
	for {
		s, err := p.expect(tString, "a quoted string")
		if err != nil {
			return nil, err
		}
		set = append(set, s.text)
		if p.tok.kind == tRBrace {
			p.advance()
			break
		}
		if _, err := p.expect(tComma, fmt.Sprintf(`"," or "}" to close "{" at position %d`, open.pos)); err != nil {
			return nil, err
		}
	}
	slices.Sort(set)
	return slices.Clip(slices.Compact(set)), nil
}

// parseKey parses and validates a label key.
func (p *parser) parseKey() (string, error) {
	t := p.tok
	if t.kind != tWord {
		return "", p.unexpected(t, "a label key")
	}
	if err := p.checkKey(t.text, t.pos); err != nil {
		return "", err
	}
	p.advance()
	return t.text, nil
}

// checkKey validates the label key k found at byte offset pos.
func (p *parser) checkKey(k string, pos int) error {
	bad := func(off int, why string) error {
		return p.errAt(pos+off, fmt.Sprintf("invalid label key %s: %s", quoteTrunc(k, 40), why))
	}
	if !isAlnum(k[0]) {
		return bad(0, "must start with a letter or digit")
	}
	name, nameOff := k, 0
	if i := strings.IndexByte(k, '/'); i >= 0 {
		if j := strings.IndexByte(k[i+1:], '/'); j >= 0 {
			return bad(i+1+j, `more than one "/"`)
		}
		if i > maxKeyPrefixLen {
			return bad(0, fmt.Sprintf("prefix longer than %d bytes", maxKeyPrefixLen))
		}
		name, nameOff = k[i+1:], i+1
		if name == "" {
			return bad(nameOff, `missing name after "/"`)
		}
		if !isAlnum(name[0]) {
			return bad(nameOff, `name after "/" must start with a letter or digit`)
		}
	}
	if len(name) > maxKeyNameLen {
		return bad(nameOff, fmt.Sprintf("name longer than %d bytes", maxKeyNameLen))
	}
	return nil
}
