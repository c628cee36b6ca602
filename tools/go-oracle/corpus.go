package main

import (
	"math/rand"
	"sort"
	"strings"
	"unicode"
)

// seeds are patterns people write, and every disagreement found so far between an earlier
// validator and Go.
var seeds = []string{
	"/.*", "/mycontext/.*", "/contextpath/.*", "^/api/v[0-9]+/", "/a--b", "/",
	"/static/**", "(?x) /api  # verbose", "x{2}{3}", "a++", `\u0041`, `\p{Script=Greek}`,
	"(?<name>x)", `\Q.\E`, `\0`, `[\d-z]`, "/a{,3}", `\b{start}`, " /api", "/api ",
	`/v1/\\d+`, `/v1/\d+`, `/api/(v1|v2)/.*`, `/(?i)admin`, `/(?P<ver>v[0-9]+)/.*`,
	`/files/[^/]+\.(png|jpe?g)$`, `^/$`, `/health(z)?`, `/api/.+`, `/[a-z&&b]`, `/\<word`,
	"/x{5000}", "/x{1000}", "/x{1001}", "/x{0,1000}", "/x{1000,}", "/(x{10}){100}",
	"/(x{10}){101}", "/((x{10}){10}){10}", "/((x{10}){10}){11}", "/(x{2}){500}", "/(x{2}){501}",
	"/(x{3}){333}", "/(x{3}){334}", "/(x{0}){1000}", "/(x*){1000}", "/(x{2,}){500}",
	`\_`, `\-`, `\/`, `\z`, `\Z`, `\A`, `\G`, `\K`, `\R`, `\X`, `\h`, `\H`, `\N`, `\cA`, `\e`,
	`\C`, `\8`, `\9`, `\18`, `\12`, `\123`, `\1234`, `\400`, `\x`, `\x4`, `\x41`, `\x{}`,
	`\x{41}`, `\x{10FFFF}`, `\x{110000}`, `\x{D800}`, `\x{0000000041}`, `\pL`, `\PL`, `\pN`,
	`\p{L}`, `\p{^L}`, `\P{^L}`, `\p{Greek}`, `\p{greek}`, `\p{Han}`, `\p{Any}`, `\p{}`, `\p`,
	`\p{`, `\pé`, `\p{Lu}`, `\p{IsGreek}`, `\p{Latin}`, `[\pL]`, `[\p{Greek}\d]`, `[\P{^Greek}]`,
	"[[:alpha:]]", "[[:^alpha:]]", "[[:word:]]", "[[:foo:]]", "[[:alpha:]", "[[:alpha]", "[:alpha:]",
	"[]a]", "[^]a]", "[]", "[^]", "[a-]", "[-a]", "[a-a]", "[b-a]", "[]-a]", `[\]]`, `[\b]`, `[\Q]`,
	`[\A]`, `[\z]`, `[a-\d]`, `[\x{41}-\x{5A}]`, `[\x{5A}-\x{41}]`, "[[]", "[a", "a]", "a)", "(a",
	"()", "(|)", "(?:)", "(?)", "(?i)", "(?-i)", "(?i-s)", "(?-)", "(?i-)", "(?i-m:x)", "(?imsU)",
	"(?x)", "(?P<n>x)", "(?P<n>", "(?P<>x)", "(?P<n-1>x)", "(?P<_n1>x)", "(?P<é>x)", "(?P=n)",
	"(?P>n)", "(?#comment)", "(?=x)", "(?!x)", "(?<=x)", "(?<!x)", "(?|a|b)", "(?>x)", "(?R)",
	"(*)", "*", "+", "?", "a**", "a*?", "a*??", "a+?", "a??", "a{2}?", "a{2}??", "a{2}*", "a*{2}",
	"^*", "$*", `\b*`, `\b{2}`, "(?i)*", "a(?i)*", "a*(?i)*", `a*\Q\E*`, `\Q\E*`, `\Qab\E*`,
	`\Qa*`, `\Q`, `\E`, `a\`, `\`, "a|*", "|*", "a||b", "|", "a{", "a{1", "a{1,", "a{1,2",
	"a{,}", "a{01}", "a{1,02}", "a{00}", "a{100000000}", "a{999999999999}", "{", "}", "{1}",
	"a{2,1}", "a{0}", "a{0,0}", "x{1000}{1}", ".", "..*", "[.]", `\.`, `\\`, "é", "/é+",
	"/日本語", "/\u00e9*", "/a\u0301", "/\U0001F600+", "(((((a)))))",
}

// atoms is the alphabet of the random generator: every construct the parser treats
// specially, valid or not, plus plain text.
var atoms = []string{
	"a", "b", "/", "-", ".", "*", "+", "?", "*?", "{2}", "{1,3}", "{,3}", "{3,}", "{3,2}",
	"{1000}", "{1001}", "{0}", "{", "}", ",", "(", ")", "(?:", "(?i)", "(?i:", "(?-s)", "(?P<n>",
	"(?<n>", "(?", "|", "[", "]", "[^", "^", "$", `\`, `\d`, `\D`, `\w`, `\b`, `\B`, `\A`, `\z`,
	`\Q`, `\E`, `\pL`, `\p{Greek}`, `\p{Foo}`, `\PN`, "[:alpha:]", "[:foo:]", `\x{41}`, `\x4`,
	`\0`, `\1`, `\7`, `\8`, `\_`, `\.`, `\/`, `\-`, `\]`, `\n`, `\t`, `\e`, "0", "1", "9", ":",
	"=", "<", ">", "!", "#", " ", "é", "日", "\t", "~", "&&", "--",
}

// classAtoms are what appears inside brackets.
var classAtoms = []string{
	"a", "z", "0", "9", "-", "]", "^", "[", ":", `\d`, `\w`, `\s`, `\pL`, `\p{Greek}`, `\b`,
	`\-`, `\]`, `\\`, `\x{41}`, `\x{5A}`, "[:alpha:]", "[:^digit:]", "[:nope:]", "é", ".", "*",
	"/", `\Q`, `\E`, `\.`,
}

func corpus() []string {
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, s := range seeds {
		add(s)
	}

	// Every single-character escape, inside and outside a class, and as a flag.
	for c := 0x20; c < 0x7f; c++ {
		ch := string(rune(c))
		add(`\` + ch)
		add(`/a\` + ch + "b")
		add(`[\` + ch + "]")
		add("(?" + ch + ")")
		add("(?" + ch + ":x)")
		add("[a" + ch + "b]")
		add("x" + ch + "*")
		add("a{1" + ch + "}")
	}

	// Every \p name this Go knows, and near misses.
	var names []string
	for n := range unicode.Categories {
		names = append(names, n)
	}
	for n := range unicode.Scripts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range append(names, "Any", "any", "L&", "Letter", "Script=Latin", "Zzzz", "Hrkt", "Lc") {
		add(`\p{` + n + `}`)
		add(`\P{^` + n + `}`)
		add(`[\p{` + n + `}a]`)
		add(`(?i)\p{` + n + `}`)
		add(`\p{` + strings.ToLower(n) + `}`)
	}
	for c := 'A'; c <= 'z'; c++ {
		add(`\p` + string(c))
		add(`[\P` + string(c) + `]`)
	}
	for _, g := range []string{"alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph",
		"lower", "print", "punct", "space", "upper", "word", "xdigit", "ALPHA", "letter", ""} {
		add("[[:" + g + ":]]")
		add("[[:^" + g + ":]]")
		add("[x[:" + g + ":]-]")
	}

	// Nesting and repetition limits near the 1024-byte cap ksr puts on paths.
	for _, n := range []int{100, 300, 340, 341, 500, 511, 512} {
		add(strings.Repeat("(", n) + "a" + strings.Repeat(")", n))
		add(strings.Repeat("(|", n/2) + strings.Repeat(")", n/2))
		add(strings.Repeat("(?:", n/2) + "a" + strings.Repeat(")", n/2))
		add(strings.Repeat("(a|", n/3) + strings.Repeat(")*", n/3))
		add("a" + strings.Repeat(`\Q\E*`, n/5))
	}
	for _, pair := range [][2]int{{2, 9}, {3, 6}, {10, 3}, {31, 2}, {32, 2}, {1000, 1}} {
		add(strings.Repeat("(", pair[1]) + "a" + strings.Repeat("){"+itoa(pair[0])+"}", pair[1]))
	}

	r := rand.New(rand.NewSource(20261130))
	// Mostly well-formed patterns, sometimes mutated: where validators drift apart.
	for len(out) < 16000 {
		p := structured(r, 3)
		if r.Intn(4) == 0 {
			i := r.Intn(len(p) + 1)
			p = p[:i] + atoms[r.Intn(len(atoms))] + p[i:]
		}
		add("/" + p)
	}
	// Token soup: every special construct next to every other.
	for len(out) < 46000 {
		var b strings.Builder
		n := 1 + r.Intn(9)
		for i := 0; i < n; i++ {
			if r.Intn(6) == 0 {
				b.WriteString("[")
				if r.Intn(3) == 0 {
					b.WriteString("^")
				}
				for j := r.Intn(4); j >= 0; j-- {
					b.WriteString(classAtoms[r.Intn(len(classAtoms))])
				}
				if r.Intn(8) != 0 {
					b.WriteString("]")
				}
				continue
			}
			b.WriteString(atoms[r.Intn(len(atoms))])
		}
		add(b.String())
		add("/" + b.String())
	}
	return out
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var d []byte
	for ; n > 0; n /= 10 {
		d = append([]byte{byte('0' + n%10)}, d...)
	}
	return string(d)
}

// routeCorpus pairs hosts ksr can produce (and some it must never produce) with paths that
// stress Go's raw-string quoting.
func routeCorpus() [][2]string {
	hosts := []string{
		"web-default.test.service.consul", "a-b-c.prod.example.org", "myapp.mydomain.com",
		"x.y", "a", "1-2.test.service.consul", "web-default.test.service.consul.",
		"Web-Default.test.service.consul", "", "a`b", "a b", "<x>.example.com",
		"<int:x>.example.com", "<foo:x>.example.com", "a\nb", "é.example.com",
	}
	paths := []string{
		"/.*", "/api", "/static/**", "a`b", "`", "/a\nb", "/a\rb", "/a\x00b", "/a\tb",
		"/a\ufeffb", "/a\u2028b", `/\x60`, `/"quoted"`, `/a\\b`, "/(?i)admin", "/a{2}",
		"/(?<n>x)", "/(?P<n>x)", "/é", "/\x7f", "/\u0085", "/" + strings.Repeat("a", 1022),
		"/ spaced", "/)", "/a && Host(`x`)",
	}
	var out [][2]string
	for _, h := range hosts {
		for _, p := range paths {
			out = append(out, [2]string{h, p})
		}
	}
	// Every path of the regexp corpus on one ordinary host.
	for _, p := range corpus() {
		out = append(out, [2]string{"web-default.test.service.consul", p})
	}
	return out
}

// structured builds a random pattern from the grammar, valid unless a leaf says otherwise.
func structured(r *rand.Rand, depth int) string {
	if depth == 0 || r.Intn(3) == 0 {
		leaves := []string{"a", "api", "v[0-9]+", ".", ".*", `\d+`, "[a-z]", "[^/]+", `\.`,
			`\pL`, `\p{Greek}`, "[[:alpha:]]", `\x{41}`, "é", "^", "$", `\b`, `\Q.*\E`,
			"[a-]", "[]a]", `[\d-z]`, "(?i)", "x{2}", "{", "}", "-", "_", "~", " "}
		return leaves[r.Intn(len(leaves))]
	}
	switch r.Intn(6) {
	case 0:
		return structured(r, depth-1) + structured(r, depth-1)
	case 1:
		return structured(r, depth-1) + "|" + structured(r, depth-1)
	case 2:
		opens := []string{"(", "(?:", "(?i:", "(?P<g>", "(?s-i:"}
		return opens[r.Intn(len(opens))] + structured(r, depth-1) + ")"
	case 3:
		ops := []string{"*", "+", "?", "*?", "+?", "??", "{2}", "{2,}", "{2,5}", "{0}", "{1,1}",
			"{10}", "{100}", "{999}", "{2}?"}
		return "(" + structured(r, depth-1) + ")" + ops[r.Intn(len(ops))]
	case 4:
		return "/" + structured(r, depth-1) + "/"
	default:
		return structured(r, depth-1) + structured(r, depth-1) + structured(r, depth-1)
	}
}
