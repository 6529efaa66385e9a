package stack

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DemoPasswords reads the sandbox's demo logins (deploy/sandbox/demo-logins.env,
// NAME_PASSWORD=value lines) as lower-case user name → password. Both alice and
// bob must be there: every browser test logs in as them.
func DemoPasswords() (map[string]string, error) {
	file := filepath.Join(ModuleRoot(), "deploy", "sandbox", "demo-logins.env")
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if user, isPassword := strings.CutSuffix(name, "_PASSWORD"); ok && isPassword {
			out[strings.ToLower(user)] = value
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if out["alice"] == "" || out["bob"] == "" {
		return nil, fmt.Errorf("%s lacks ALICE_PASSWORD or BOB_PASSWORD", file)
	}
	return out, nil
}
