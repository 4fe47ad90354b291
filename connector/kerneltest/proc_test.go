package kerneltest

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cmdTimeout bounds every short command (ip, wg, nft, sysctl).
const cmdTimeout = 20 * time.Second

// command makes cmd for args in its own process group, killed whole when
// ctx ends or the test binary dies.
func command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// run runs args to completion within cmdTimeout and returns its output;
// the error names the command and carries the output.
func run(args ...string) (string, error) {
	return runStdin("", args...)
}

// runStdin is run with stdin.
func runStdin(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := command(ctx, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// proc is a long-running process the tier started, in its own process
// group.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returned
	err  error         // cmd.Wait's result, once done is closed

	mu    sync.Mutex // guards the fields after it
	out   bytes.Buffer
	watch func(line string) // called with each complete output line
	part  []byte            // an incomplete last line
}

// startProc starts args; watch, if not nil, sees each line of its
// combined output as it comes. A cleanup of t kills the process group and
// waits for it.
func startProc(t *testing.T, name string, env []string, watch func(line string), args ...string) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{}), watch: watch}
	p.cmd = command(context.Background(), args...)
	p.cmd.Env = env
	p.cmd.Stdout = p
	p.cmd.Stderr = p
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.kill() })
	return p, nil
}

// Write collects the output and feeds whole lines to watch.
func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.out.Write(b)
	if p.watch == nil {
		return len(b), nil
	}
	p.part = append(p.part, b...)
	for {
		i := bytes.IndexByte(p.part, '\n')
		if i < 0 {
			break
		}
		p.watch(string(p.part[:i]))
		p.part = p.part[i+1:]
	}
	return len(b), nil
}

// output is everything the process wrote so far.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill kills the process group and waits for the process.
func (p *proc) kill() {
	if !p.exited() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// stop sends sig and waits up to timeout for the process to exit, then
// kills the group. It returns the process's exit error, or an error if it
// had to be killed.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if p.exited() {
		return fmt.Errorf("%s had already exited: %v", p.name, p.err)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s did not exit within %v of %v; killed", p.name, timeout, sig)
	}
}

// waitFor waits up to timeout for ok, checking every few milliseconds;
// it fails early if p exits.
func (p *proc) waitFor(timeout time.Duration, what string, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if p.exited() {
			return fmt.Errorf("%s exited before %s: %v\n%s", p.name, what, p.err, p.output())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no %s within %v\n%s", p.name, what, timeout, p.output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}
