package kerneltest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/appconnector/appconnector/netstack/netstacktest"
)

// upstreamReady is the line the upstream prints once it listens.
const upstreamReady = "upstream listening"

// TestMain also makes the test binary the upstream HTTP server (role
// "upstream", its argument the address to listen on).
func TestMain(m *testing.M) {
	code := netstacktest.Main(m, map[string]func([]string) int{"upstream": func(args []string) int {
		if err := serveUpstream(args[0], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			return 1
		}
		return 0
	}})
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// serveUpstream serves, until killed:
//
//	GET /down?n=N  N bytes
//	PUT /up        reads the body; 200 and its length if it was all there
//	GET /small     "ok"
func serveUpstream(addr string, ready io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	chunk := make([]byte, 1<<20)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /down", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "bad n", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for n > 0 {
			k := min(n, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("PUT /up", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil || n != r.ContentLength {
			http.Error(w, fmt.Sprintf("read %d of %d bytes: %v", n, r.ContentLength, err), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	fmt.Fprintln(ready, upstreamReady, ln.Addr())
	return (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
}

// build is the connector binary, built once per test binary run.
var build struct {
	once sync.Once
	dir  string // removed by TestMain
	bin  string
	err  error
}

// connectorBinary builds ./cmd/appconnector (not with -race: it is the
// real binary) into a directory everyone may read, once.
func connectorBinary() (string, error) {
	build.once.Do(func() {
		goCmd, err := exec.LookPath("go")
		if err != nil {
			goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
		}
		dir, err := os.MkdirTemp("", "appconnector-kerneltest-bin-")
		if err != nil {
			build.err = err
			return
		}
		build.dir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			build.err = err
			return
		}
		bin := filepath.Join(dir, "appconnector")
		cmd := exec.Command(goCmd, "build", "-o", bin, "./cmd/appconnector")
		cmd.Dir = filepath.Join("..", "..") // the module root
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/appconnector: %w\n%s", err, out)
			return
		}
		build.bin = bin
	})
	if build.bin == "" && build.err == nil {
		return "", errors.New("go build ./cmd/appconnector: no binary")
	}
	return build.bin, build.err
}
