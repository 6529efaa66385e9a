package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// OperatorPackage is the package under which operator modules live. Each module
// declares `package kubegate.operator.<name>` and may define `deny` as a set of
// messages. Operator modules are compiled apart from the built-in policy, so they can
// add denials but can never change, or widen, the built-in decision.
const OperatorPackage = "kubegate.operator"

// Module is one operator Rego module.
type Module struct {
	File   string
	Source string
}

// maxModules bounds the number of operator modules loaded from a directory.
const maxModules = 1000

// LoadModules reads every *.rego file under dir (recursively), skipping *_test.rego
// and directories whose names start with ".." (a Kubernetes ConfigMap or Secret
// volume keeps the real files in a ..<timestamp> directory behind ..data and links
// each file from the top: k8s.io/kubernetes pkg/volume/util/atomic_writer.go;
// reading both would load every module twice), and checks that each parses as Rego v1 in a kubegate.operator.<name> package. An
// empty dir argument means no modules.
func LoadModules(dir string) ([]Module, error) {
	if dir == "" {
		return nil, nil
	}
	var mods []Module
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && path != dir && strings.HasPrefix(d.Name(), "..") {
			return fs.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".rego") || strings.HasSuffix(path, "_test.rego") {
			return nil
		}
		if len(mods) == maxModules {
			return fmt.Errorf("more than %d modules", maxModules)
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		mods = append(mods, Module{File: path, Source: string(src)})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy modules in %s: %w", dir, err)
	}
	if len(mods) == 0 {
		return nil, fmt.Errorf("policy modules in %s: no .rego files found; remove --policy or add modules", dir)
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].File < mods[j].File })
	return mods, nil
}

// operatorPolicy evaluates every operator package's deny set in one prepared query
// ([data.kubegate.operator.a.deny, data.kubegate.operator.b.deny, …]). Asking for the
// deny sets directly is much cheaper than asking for the whole data.kubegate.operator
// tree, which would evaluate every helper rule too; and because each deny is a
// partial set, it is always defined (empty when nothing denies), so the query always
// answers.
type operatorPolicy struct {
	packages []string
	query    rego.PreparedEvalQuery
}

func newOperatorPolicy(ctx context.Context, modules []Module) (*operatorPolicy, error) {
	var (
		parsedModules []func(*rego.Rego)
		problems      []string
		withDeny      = map[string]bool{}
	)
	for _, m := range modules {
		parsed, err := ast.ParseModuleWithOpts(m.File, m.Source, ast.ParserOptions{RegoVersion: ast.RegoV1})
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		pkg := strings.TrimPrefix(parsed.Package.Path.String(), "data.")
		if !strings.HasPrefix(pkg, OperatorPackage+".") {
			problems = append(problems, fmt.Sprintf("%s: package %s is not allowed: operator modules must declare package %s.<name>", m.File, pkg, OperatorPackage))
			continue
		}
		parsedModules = append(parsedModules, rego.ParsedModule(parsed))
		for _, r := range parsed.Rules {
			ref := r.Head.Ref()
			if len(ref) == 0 || !ref[0].Equal(ast.VarTerm("deny")) {
				continue
			}
			// Only the plain partial set "deny contains msg" is read. Any other rule
			// named deny (deny := …, deny[msg] if …, deny.pods contains …) would be
			// silently ignored at run time, which fails open: refuse it now.
			if len(ref) != 1 || r.Head.RuleKind() != ast.MultiValue {
				problems = append(problems, fmt.Sprintf("%s:%d: %s must be written deny contains msg if { … } (a set of messages); other forms would be ignored", m.File, r.Location.Row, ref))
				continue
			}
			withDeny[pkg] = true
		}
	}
	if len(problems) > 0 {
		return nil, errors.New("policy modules: " + strings.Join(problems, "\n"))
	}
	p := &operatorPolicy{packages: slices.Sorted(maps.Keys(withDeny))}
	if len(p.packages) == 0 {
		return nil, errors.New("policy modules: no module defines deny; an operator module adds denials with deny contains msg if { … }")
	}
	refs := make([]string, len(p.packages))
	for i, pkg := range p.packages {
		refs[i] = "data." + pkg + ".deny"
	}
	opts := append([]func(*rego.Rego){rego.Query("[" + strings.Join(refs, ", ") + "]"), rego.StrictBuiltinErrors(true)}, parsedModules...)
	q, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy modules: %w", err)
	}
	p.query = q
	return p, nil
}

// denials evaluates every operator package and collects its deny messages. Whatever
// deny holds that is not a set of strings still denies (with a generic message): an
// operator's mistake must not let a request through.
func (p *operatorPolicy) denials(ctx context.Context, identityPart [][2]*ast.Term, req Request) ([]string, error) {
	sets, err := p.denialSets(ctx, identityPart, req)
	if err != nil {
		return nil, err
	}
	var out []string
	for i, pkg := range p.packages {
		out = appendDenials(out, pkg, sets[i])
	}
	return out, nil
}

// denialSets evaluates the query and returns each package's deny value, in the
// order of p.packages (read with appendDenials). `kubegate explain` reports them
// per package.
func (p *operatorPolicy) denialSets(ctx context.Context, identityPart [][2]*ast.Term, req Request) ([]any, error) {
	input := make([][2]*ast.Term, len(identityPart), len(identityPart)+1)
	copy(input, identityPart)
	input = append(input, ast.Item(ast.StringTerm("request"), requestTerm(req)))
	rs, err := p.query.Eval(ctx, rego.EvalParsedInput(ast.NewObject(input...)))
	if err != nil {
		return nil, fmt.Errorf("policy modules: %w", err)
	}
	var sets []any
	if len(rs) == 1 && len(rs[0].Expressions) == 1 {
		sets, _ = rs[0].Expressions[0].Value.([]any)
	}
	if len(sets) != len(p.packages) {
		return nil, errors.New("policy modules: the deny query returned no answer")
	}
	return sets, nil
}

// appendDenials reads one package's deny set. A member that is not a non-empty
// string still denies, with a generic message: an operator's mistake must not let a
// request through.
func appendDenials(out []string, pkg string, v any) []string {
	set, ok := v.([]any) // Rego sets arrive as []any
	if !ok {
		return append(out, fmt.Sprintf("denied by policy %s", pkg))
	}
	for _, msg := range set {
		if s, ok := msg.(string); ok && s != "" {
			out = append(out, s)
		} else {
			out = append(out, fmt.Sprintf("denied by policy %s", pkg))
		}
	}
	return out
}

func requestTerm(r Request) *ast.Term {
	return ast.ObjectTerm(
		ast.Item(ast.StringTerm("verb"), ast.StringTerm(r.Verb)),
		ast.Item(ast.StringTerm("apiGroup"), ast.StringTerm(r.APIGroup)),
		ast.Item(ast.StringTerm("apiVersion"), ast.StringTerm(r.APIVersion)),
		ast.Item(ast.StringTerm("resource"), ast.StringTerm(r.Resource)),
		ast.Item(ast.StringTerm("subresource"), ast.StringTerm(r.Subresource)),
		ast.Item(ast.StringTerm("namespace"), ast.StringTerm(r.Namespace)),
		ast.Item(ast.StringTerm("name"), ast.StringTerm(r.Name)),
		ast.Item(ast.StringTerm("isResourceRequest"), ast.BooleanTerm(r.IsResourceRequest)),
		ast.Item(ast.StringTerm("path"), ast.StringTerm(r.Path)),
		ast.Item(ast.StringTerm("fieldSelector"), ast.StringTerm(r.FieldSelector)),
		ast.Item(ast.StringTerm("labelSelector"), ast.StringTerm(r.LabelSelector)),
		ast.Item(ast.StringTerm("dryRun"), ast.BooleanTerm(r.DryRun)),
		ast.Item(ast.StringTerm("fieldManager"), ast.StringTerm(r.FieldManager)),
	)
}

// CheckModules compiles modules as NewEngine does, so a caller can refuse them
// before it changes anything else (NewEngine compiles them again per engine).
func CheckModules(ctx context.Context, modules []Module) error {
	if len(modules) == 0 {
		return nil
	}
	_, err := newOperatorPolicy(ctx, modules)
	return err
}
