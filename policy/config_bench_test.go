package policy

import (
	"testing"

	"kubegate.dev/kubegate/test/realsize"
)

// BenchmarkParseAgentConfigRealSize parses the real-size agent configuration (500
// projects + 500 groups): once at start-up and on every change of the file.
func BenchmarkParseAgentConfigRealSize(b *testing.B) {
	data, err := realsize.Generate(realsize.Default())
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseAgentConfig("a.yaml", data.AgentConfig); err != nil {
			b.Fatal(err)
		}
	}
}
