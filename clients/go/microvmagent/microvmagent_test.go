package microvmagent

// The Go client library: its parts alone, then against the real agent (a new generation and its
// acknowledgement, a callback that returns an error, one that panics and one that never returns,
// suspend and terminate). The app the agent supervises is this test binary itself, re-executed
// in app mode (MVA_GO_TEST_APP).

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	mrand "math/rand/v2"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv("MVA_GO_TEST_APP"); mode != "" {
		app(mode, os.Getenv("MVA_GO_TEST_OUT"))
		return
	}
	os.Exit(m.Run())
}

func appendLine(dir, name, text string) {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err == nil {
		fmt.Fprintln(f, text)
		f.Close()
	}
}

// app is what the agent supervises: a generator it keeps, two callbacks, suspend and terminate.
func app(mode, out string) {
	c := New(Options{})
	src := c.NewChaCha8()
	rng := mrand.New(src)
	c.OnNewGeneration(func(ctx context.Context, g Generation) error {
		c.ReseedChaCha8(src)
		appendLine(out, "order", "first")
		return nil
	})
	c.OnNewGeneration(func(ctx context.Context, g Generation) error {
		appendLine(out, "order", "second")
		appendLine(out, "generations", fmt.Sprintf("%d %s %v", g.Number, g.ID, g.ProcessSeed != nil))
		appendLine(out, "draws", fmt.Sprint(rng.Uint64()))
		if deadline, ok := ctx.Deadline(); ok {
			appendLine(out, "budgets", fmt.Sprint(time.Until(deadline).Milliseconds()))
		}
		if g.Reason == "run" {
			switch mode {
			case "error":
				return errors.New("the app's callback broke")
			case "panic":
				panic("the app's callback panicked")
			case "hang":
				<-ctx.Done() // a callback that honours its context gives up at the deadline
				appendLine(out, "gave-up", ctx.Err().Error())
				return ctx.Err()
			}
		}
		return nil
	})
	c.OnSuspend(func(_ context.Context, g Generation) error {
		appendLine(out, "events", fmt.Sprint("suspend ", g.Number))
		return nil
	})
	c.OnTerminate(func(_ context.Context, g Generation) error {
		appendLine(out, "events", fmt.Sprint("terminate ", g.Number))
		return nil
	})
	err := c.Start(context.Background())
	appendLine(out, "started", "yes")
	if mode == "outside" {
		fmt.Println(errors.Is(err, ErrNotBehindAgent), c.Active(), c.GenerationID() == "")
		return
	}
	if err != nil {
		panic(err)
	}
	select {}
}

func TestTheProtocolLines(t *testing.T) {
	m, ok := parse("MVA1 generation 3 " + strings.Repeat("ab", 32))
	if !ok || m.event != "generation" || m.number != 3 || len(m.seed) != 32 || m.seed[0] != 0xab || m.budget != -1 {
		t.Fatalf("%v %v", m, ok)
	}
	if m, ok := parse("MVA1 generation 3 " + strings.Repeat("ab", 32) + " 850"); !ok || m.budget != 850 {
		t.Fatalf("%v %v", m, ok)
	}
	if m, ok := parse("MVA1 event suspend 3"); !ok || m.event != "suspend" || m.seed != nil {
		t.Fatalf("%v", m)
	}
	if m, ok := parse("MVA1 event terminate 3 0"); !ok || m.event != "terminate" || m.budget != 0 {
		t.Fatalf("%v", m)
	}
	for _, bad := range []string{"MVA1 event reboot 3", "MVA2 generation 3 " + strings.Repeat("ab", 32), "MVA1 generation x y",
		"MVA1 event suspend 3 -1", "MVA1 event suspend 3 soon", "MVA1 event suspend 3 1 2"} {
		if _, ok := parse(bad); ok {
			t.Fatalf("accepted %q", bad)
		}
	}
	line := failLine(7, "boom: "+strings.Repeat("é", 300)+"\nmore")
	if len(line) > 256 || len(line) < 254 || !strings.HasSuffix(line, "\n") || strings.Count(line, "\n") != 1 || !utf8.ValidString(line) {
		t.Fatalf("%q", line)
	}
	// Cut once, by bytes (a rune at a time took seconds for 32 KiB): at once, or the runner's
	// timeout fails it.
	if huge := failLine(7, strings.Repeat("x", 16<<20)); len(huge) != 256 {
		t.Fatalf("%d bytes", len(huge))
	}
	if bad := failLine(7, "a\xffb"); !utf8.ValidString(bad) {
		t.Fatalf("%q", bad)
	}
}

// vectors reads one of the protocol's conformance files (testdata/ at the repository's root).
func vectors(t *testing.T, name string) [][]string {
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out [][]string
	for _, l := range strings.Split(string(raw), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, strings.Split(l, "\t"))
		}
	}
	return out
}

func TestReadsTheAgentsLinesAsTheVectorsSay(t *testing.T) {
	records := vectors(t, "lines.tsv")
	if len(records) < 20 {
		t.Fatalf("only %d vectors", len(records))
	}
	for _, r := range records {
		line, _ := hex.DecodeString(r[0])
		m, ok := parse(string(line))
		got := "ignore"
		if ok {
			ms := "-"
			if m.budget >= 0 {
				ms = strconv.FormatInt(m.budget, 10)
			}
			if m.event == "generation" {
				got = fmt.Sprintf("generation %d %x %s", m.number, m.seed, ms)
			} else {
				got = fmt.Sprintf("event %s %d %s", m.event, m.number, ms)
			}
		}
		if got != r[1] {
			t.Errorf("%q: got %q, want %q", line, got, r[1])
		}
	}
}

func TestMixesAsTheVectorsSay(t *testing.T) {
	for _, r := range vectors(t, "mix.tsv") {
		seed, _ := hex.DecodeString(r[0])
		pid, _ := strconv.ParseUint(r[1], 10, 32)
		n, _ := strconv.ParseUint(r[2], 10, 64)
		fresh, _ := hex.DecodeString(r[3])
		if got := mix(seed, uint32(pid), n, fresh); hex.EncodeToString(got[:]) != r[5] {
			t.Errorf("%v: got %x", r, got)
		}
	}
}

func TestReadsGenerationFilesAsTheVectorsSay(t *testing.T) {
	records := vectors(t, "generation.tsv")
	if len(records) < 8 {
		t.Fatalf("only %d vectors", len(records))
	}
	for _, r := range records {
		raw, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", "generation", r[0]))
		if err != nil {
			t.Fatal(err)
		}
		g, err := parseGeneration(raw)
		if r[1] == "reject" {
			if err == nil {
				t.Errorf("%s: read as %+v", r[0], g)
			}
			continue
		}
		vm := g.MicrovmID
		if vm == "" {
			vm = "null"
		}
		got := []string{r[0], strconv.FormatUint(g.Number, 10), g.ID, g.Reason, vm, g.KernelCRNG}
		if err != nil || strings.Join(got, "\t") != strings.Join(r, "\t") {
			t.Errorf("%s: got %q (%v), want %q", r[0], got, err, r)
		}
	}
}

func TestReseedMakesAKeptGeneratorLeaveItsSequence(t *testing.T) {
	var s [32]byte
	a, b := mrand.NewChaCha8(s), mrand.NewChaCha8(s)
	New(Options{}).ReseedChaCha8(a)
	if a.Uint64() == b.Uint64() {
		t.Fatal("the same sequence after a reseed")
	}
}

func TestOutsideAMicroVMItDoesNothingAndSaysSoOnce(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = []string{"MVA_GO_TEST_APP=outside", "MVA_GO_TEST_OUT=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if strings.Count(string(out), "not behind microvm-agent") != 1 || !strings.Contains(string(out), "true false true") {
		t.Fatalf("%s", out)
	}
}

// ---- against the real agent ----

type agent struct {
	t    *testing.T
	port int
	out  string
	cmd  *exec.Cmd
}

func agentBinary(t *testing.T) string {
	bin := os.Getenv("MICROVM_AGENT_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../../../target/debug/microvm-agent")
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("MICROVM_AGENT_REQUIRE_VM") != "" {
			t.Fatalf("the agent is not built: %s", bin)
		}
		t.Skipf("the agent is not built (cargo build): %s", bin)
	}
	return bin
}

func start(t *testing.T, mode string) *agent {
	bin := agentBinary(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := filepath.Join(dir, "agent.toml")
	os.WriteFile(conf, []byte("[hooks]\nrun_timeout = \"2s\"\n"), 0o644)
	out := filepath.Join(dir, "out")
	os.Mkdir(out, 0o755)
	cmd := exec.Command(bin, "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--state-dir", filepath.Join(dir, "state"),
		"--log-format", "text", "-c", conf, "--", os.Args[0])
	cmd.Env = append(os.Environ(), "MVA_GO_TEST_APP="+mode, "MVA_GO_TEST_OUT="+out, "MICROVM_AGENT_LOG=warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agent{t, port, out, cmd}
	t.Cleanup(func() {
		// SIGTERM: the agent stops the app (which holds our stderr) before it exits.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
		}
	})
	a.waitFor("the app to start", func() bool { return len(a.read("started")) > 0 })
	a.waitFor("the library to register", func() bool {
		for _, p := range a.status()["inproc"].(map[string]any)["processes"].([]any) {
			if p.(map[string]any)["kind"] == "app" {
				return true
			}
		}
		return false
	})
	return a
}

func (a *agent) hook(path string) (int, string) {
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", a.port, path), "application/json", nil)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (a *agent) status() map[string]any {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/status", a.port))
	if err != nil {
		return map[string]any{"inproc": map[string]any{"processes": []any{}}}
	}
	defer resp.Body.Close()
	var v map[string]any
	json.NewDecoder(resp.Body).Decode(&v)
	return v
}

func (a *agent) read(name string) []string {
	b, err := os.ReadFile(filepath.Join(a.out, name))
	if err != nil {
		return nil
	}
	return strings.Fields(strings.ReplaceAll(string(b), " ", "_"))
}

func (a *agent) waitFor(why string, f func() bool) {
	deadline := time.Now().Add(20 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			a.t.Fatalf("waited for %s", why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestANewGenerationRunsTheCallbacksInOrderBeforeTheHookAnswers(t *testing.T) {
	a := start(t, "ok")
	if got := a.read("generations"); len(got) != 0 {
		t.Fatalf("nothing at start (the build VM): %v", got)
	}
	if code, body := a.hook("/run"); code != 200 {
		t.Fatalf("/run: %d %s", code, body)
	}
	if got := strings.Join(a.read("order"), " "); got != "first second" {
		t.Fatalf("order: %q", got)
	}
	gen := a.status()["generation"].(map[string]any)
	want := fmt.Sprintf("%v_%v_true", gen["generation"], gen["id"])
	if got := a.read("generations"); len(got) != 1 || got[0] != want {
		t.Fatalf("%v, want %s", got, want)
	}
	if code, _ := a.hook("/suspend"); code != 200 {
		t.Fatal("/suspend")
	}
	if got := a.read("events"); len(got) != 1 || got[0] != "suspend_1" {
		t.Fatalf("%v", got)
	}
	if code, _ := a.hook("/resume"); code != 200 {
		t.Fatal("/resume")
	}
	if draws := a.read("draws"); len(draws) != 2 || draws[0] == draws[1] {
		t.Fatalf("%v", draws)
	}
	// The agent's deadline travels with each line: inside run_timeout (2 s), and not yet past.
	for _, b := range a.read("budgets") {
		if ms, err := strconv.Atoi(b); err != nil || ms <= 0 || ms > 2000 {
			t.Fatalf("budgets: %v", a.read("budgets"))
		}
	}
	if got := a.read("budgets"); len(got) != 2 {
		t.Fatalf("budgets: %v", got)
	}
	if code, _ := a.hook("/terminate"); code != 200 {
		t.Fatal("/terminate")
	}
	a.waitFor("the terminate callback", func() bool { return strings.Contains(strings.Join(a.read("events"), " "), "terminate_2") })
}

func TestACallbackThatFailsFailsRunAndOnlyReportsOnResume(t *testing.T) {
	for mode, want := range map[string]string{"error": "the app's callback broke", "panic": "panic: the app's callback panicked"} {
		a := start(t, mode)
		code, body := a.hook("/run")
		if code != 500 || !strings.Contains(body, want) {
			t.Fatalf("%s: %d %s", mode, code, body)
		}
		if code, body := a.hook("/resume"); code != 200 {
			t.Fatalf("%s /resume: %d %s", mode, code, body)
		}
	}
}

func TestACallbackPastItsDeadlineFailsRunInsideItsBudget(t *testing.T) {
	a := start(t, "hang")
	t0 := time.Now()
	code, body := a.hook("/run")
	if code != 500 || (!strings.Contains(body, "did not acknowledge") && !strings.Contains(body, "deadline exceeded")) {
		t.Fatalf("%d %s", code, body)
	}
	if time.Since(t0) > 2*time.Second {
		t.Fatalf("answered after run_timeout (2 s): %v", time.Since(t0))
	}
	// The callback saw its context end at the agent's deadline.
	a.waitFor("the callback to give up", func() bool { return len(a.read("gave-up")) > 0 })
}
