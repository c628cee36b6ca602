// Command go-oracle asks Go itself what vulcand will accept, so that ksr's validators can be
// checked against Go's own parsers instead of our reading of them.
//
// It is run by scripts/go-oracle.sh with several Go releases (the oldest and newest Debian
// ships); the script keeps only what every release accepts and writes the golden files under
// proto/tests/golden/. Nothing in the build or the test command needs Go.
//
//	go-oracle corpus            print the regexp corpus, one JSON string per line
//	go-oracle regexp < corpus   print "ok" or "err" and the JSON pattern, per line
//	go-oracle routes            print host/path pairs for the route corpus
//	go-oracle route < pairs     parse each route expression as vulcand does
//	go-oracle names             print the \p{...} names this Go release knows
//
// The route check follows vulcand's route parser (github.com/vulcand/route with
// github.com/mailgun/predicate): go/parser.ParseExpr, then only && of calls whose arguments
// are string literals, unquoted with strconv.Unquote; Host builds a trie (non-empty, <x>
// parameters), PathRegexp compiles with regexp.Compile.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-oracle corpus|regexp|routes|route|names")
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	switch os.Args[1] {
	case "corpus":
		for _, p := range corpus() {
			fmt.Fprintln(out, quote(p))
		}
	case "regexp":
		eachLine(func(line string) {
			p := unquote(line)
			verdict := "ok"
			if _, err := regexp.Compile(p); err != nil {
				verdict = "err"
			}
			fmt.Fprintf(out, "%s\t%s\n", verdict, line)
		})
	case "routes":
		for _, r := range routeCorpus() {
			fmt.Fprintf(out, "%s\t%s\n", quote(r[0]), quote(r[1]))
		}
	case "route":
		eachLine(func(line string) {
			parts := strings.SplitN(line, "\t", 2)
			host, path := unquote(parts[0]), unquote(parts[1])
			expr := "Host(`" + host + "`) && PathRegexp(`" + path + "`)"
			verdict := "ok"
			if h, p, err := parseRoute(expr); err != nil {
				verdict = "err"
			} else if h != host || p != path {
				// Parsed, but not to what was meant (a raw string drops carriage returns).
				verdict = "changed"
			}
			fmt.Fprintf(out, "%s\t%s\t%s\t%s\n", verdict, parts[0], parts[1], quote(expr))
		})
	case "names":
		var names []string
		names = append(names, "Any")
		for n := range unicode.Categories {
			names = append(names, n)
		}
		for n := range unicode.Scripts {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintln(out, n)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func eachLine(f func(string)) {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		if line := in.Text(); line != "" {
			f(line)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// quote writes s as a JSON string without HTML escaping, so the golden files stay readable.
func quote(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		panic(err)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func unquote(s string) string {
	var out string
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		panic(fmt.Sprintf("bad corpus line %q: %v", s, err))
	}
	return out
}

// parseRoute parses expr the way vulcand does and returns the Host and PathRegexp arguments.
func parseRoute(expr string) (host, path string, err error) {
	node, err := parser.ParseExpr(expr)
	if err != nil {
		return "", "", err
	}
	args := map[string]string{}
	if err := walk(node, args); err != nil {
		return "", "", err
	}
	return args["Host"], args["PathRegexp"], nil
}

func walk(node ast.Node, args map[string]string) error {
	switch n := node.(type) {
	case *ast.ParenExpr:
		return walk(n.X, args)
	case *ast.BinaryExpr:
		if n.Op != token.LAND {
			return fmt.Errorf("%v is not supported", n.Op)
		}
		if err := walk(n.X, args); err != nil {
			return err
		}
		return walk(n.Y, args)
	case *ast.CallExpr:
		id, ok := n.Fun.(*ast.Ident)
		if !ok {
			return fmt.Errorf("expected identifier, got %T", n.Fun)
		}
		if len(n.Args) != 1 {
			return fmt.Errorf("%s takes one argument", id.Name)
		}
		lit, ok := n.Args[0].(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return fmt.Errorf("expected a string literal")
		}
		value, err := strconv.Unquote(lit.Value)
		if err != nil {
			return err
		}
		switch id.Name {
		case "Host":
			if err := checkTrie(strings.ToLower(value)); err != nil {
				return err
			}
		case "PathRegexp":
			if _, err := regexp.Compile(value); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unsupported function: %s", id.Name)
		}
		if _, dup := args[id.Name]; dup {
			return fmt.Errorf("%s twice", id.Name)
		}
		args[id.Name] = value
		return nil
	}
	return fmt.Errorf("unsupported %T", node)
}

var trieParam = regexp.MustCompile("^<([^>]+)>")

// checkTrie applies the checks of vulcand's trie matcher: a non-empty expression whose
// <param> placeholders are <name>, <string:name> or <int:name>.
func checkTrie(expr string) error {
	if expr == "" {
		return fmt.Errorf("empty URL expression")
	}
	for i := 0; i < len(expr); i++ {
		m := trieParam.FindStringSubmatch(expr[i:])
		if m == nil {
			continue
		}
		values := strings.Split(m[1], ":")
		if len(values) == 1 {
			continue
		}
		if (values[0] != "string" && values[0] != "int") || len(values) != 2 {
			return fmt.Errorf("unsupported matcher: %s", m[1])
		}
		i += len(m[0]) - 1
	}
	return nil
}
