// Command selector-oracle asks Kubernetes' own label-selector parser
// (k8s.io/apimachinery/pkg/labels, from Debian's golang-k8s-apimachinery-dev) for its verdict
// on each selector of a corpus, and which of a fixed list of label sets it selects, so that
// ksr's selector parser is checked against the apiserver's. Run by scripts/go-oracle.sh.
//
//	selector-oracle corpus             print the selector corpus, one JSON string per line
//	selector-oracle check < corpus     print verdict, selector and the selected label sets
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// labelSets are what every accepted selector is matched against (index = bit position).
var labelSets = []map[string]string{
	{},
	{"type": "ingress"},
	{"type": "egress"},
	{"type": "ingress", "env": "prod"},
	{"type": "ingress", "env": "staging"},
	{"type": "ingress", "env": "dev", "canary": "true"},
	{"role": "ingress"},
	{"app.kubernetes.io/name": "web", "tier": "x"},
	{"tier": "y", "env": "prod"},
	{"a": "", "b": "1"},
	{"example.com/team": "a-b_c.d"},
	{"gt": "5", "lt": "10"},
}

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: selector-oracle corpus|check|sets")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "sets":
		b, _ := json.Marshal(labelSets)
		fmt.Fprintln(out, string(b))
	case "corpus":
		for _, s := range corpus() {
			b, _ := json.Marshal(s)
			fmt.Fprintln(out, string(b))
		}
	case "check":
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			line := in.Text()
			var s string
			if err := json.Unmarshal([]byte(line), &s); err != nil {
				panic(err)
			}
			sel, err := labels.Parse(s)
			if err != nil {
				fmt.Fprintf(out, "err\t%s\t\n", line)
				continue
			}
			var selected []string
			for i, set := range labelSets {
				if sel.Matches(labels.Set(set)) {
					selected = append(selected, fmt.Sprint(i))
				}
			}
			fmt.Fprintf(out, "ok\t%s\t%s\n", line, strings.Join(selected, ","))
		}
	}
}

func corpus() []string {
	seeds := []string{
		"type=ingress", "type==ingress", "type!=ingress", "role=ingress", "type", "!type",
		"env in (prod,staging)", "env in (prod, staging)", "env notin (prod)", "!canary",
		"tier notin (x)", "type=ingress,env in (prod)", "type=ingress, env=prod", "",
		" ", "type=", "type=ingress,", ",type=ingress", "type=ingress,,env=prod",
		"env in ()", "env in (prod", "env in prod", "env notin ()", "in (a)", "env in (a,)",
		"env in (,a)", "type=ingress=x", "type = ingress", "type= ingress", " type=ingress ",
		"app.kubernetes.io/name=web", "example.com/team=a-b_c.d", "Type=Ingress",
		"type=Ingress", "-type=ingress", "type-=ingress", "type=-ingress", "type=ingress-",
		"a/b/c=d", "/a=b", "a/=b", "a=" + strings.Repeat("v", 63), "a=" + strings.Repeat("v", 64),
		strings.Repeat("k", 63) + "=v", strings.Repeat("k", 64) + "=v", "gt>4", "gt<6", "lt>9",
		"gt>x", "gt > 4", "gt>=4", "a=b c", "a=(b)", "a in (b c)", "a in (b) c", "!a=b",
		"!!a", "! a", "a!", "a!=", "a!b", "type in (ingress),!canary,env notin (dev)",
		"type=ingress;env=prod", "type=ingr\u00e9ss", "t\u00e9=x", "type='ingress'",
		"type=\"ingress\"", "a==", "a===b", "a=!b", "env In (prod)", "env IN (prod)",
		"env notIn (prod)", "a in(b)", "a in  (b)", "a\tin (b)", "a=b\t", "a=b\n",
		"a,b", "a , b", "!a,!b", "x=1,x=2", "x in (1),x notin (1)",
	}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, s := range seeds {
		add(s)
	}
	keys := []string{"type", "env", "canary", "tier", "app.kubernetes.io/name", "a", "gt", "Bad_Key", "x/y/z"}
	values := []string{"ingress", "prod", "staging", "x", "web", "", "5", "a-b", "-no", "UP"}
	ops := []string{"=", "==", "!=", " in ", " notin ", ">", "<"}
	for _, k := range keys {
		add(k)
		add("!" + k)
		for _, op := range ops {
			for _, v := range values {
				if strings.TrimSpace(op) == "in" || strings.TrimSpace(op) == "notin" {
					add(k + op + "(" + v + ")")
					add(k + op + "(" + v + ",prod)")
				} else {
					add(k + op + v)
				}
			}
		}
	}
	n := len(out)
	for i := 0; i < n; i++ {
		for j := i + 1; j < n && j < i+40; j += 7 {
			add(out[i] + "," + out[j])
		}
	}
	return out
}
