package connector

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// The state directory holds the connector's private key, its learned
// routes and its admin socket. Another user who can write there can plant
// a key they know or replace the socket the CLI talks to, so a directory
// or file that is not the running user's own, or that its group or others
// may write, is refused with an error saying which and how to fix it.

// PrepareStateDir creates dir (0700) if it does not exist and checks that
// it is safe to keep state in: a directory (not a symbolic link) owned by
// the running user (or by root, when running as root) that neither group
// nor others may write.
func PrepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("state directory %s is a symbolic link; pass the directory it points to", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	return checkOwnership(dir, fi, "chmod 700")
}

// checkStateFile checks a state file that exists: a regular file (not a
// link), the running user's own, that group and others may not write. A
// missing file is fine.
func checkStateFile(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("state file %s is not a regular file (%v): refusing it", path, fi.Mode().Type())
	}
	return checkOwnership(path, fi, "chmod 600")
}

// checkOwnership refuses fi (of path) if the running user does not own it
// or group or others may write it; fix is the chmod that would help.
func checkOwnership(path string, fi fs.FileInfo, fix string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil // not a Unix file system: nothing to check
	}
	uid := os.Geteuid()
	if int(st.Uid) != uid {
		return fmt.Errorf("%s belongs to uid %d, not to this process (uid %d): another user could have planted keys or an admin socket there; "+
			"use a directory of your own (--state), or chown it if it is yours", path, st.Uid, uid)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s is writable by group or others (mode %04o): another user could plant keys or an admin socket there; %s %s",
			path, perm, fix, path)
	}
	return nil
}
