package kubeconfig

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Result says what Update did.
type Result struct {
	// Changed is false when the kubeconfig already held the entry exactly: nothing
	// was written.
	Changed bool
	// File is the kubeconfig file that holds the context.
	File string
}

// Update merges e into the kubeconfig access describes (the --kubeconfig file, else
// the KUBECONFIG list, else ~/.kube/config) and writes the changed entries back with
// clientcmd.ModifyConfig, each to the file it came from, new ones to the default file.
// Files it writes are restricted to their owner (0600): a kubeconfig holds
// credentials, and clientcmd gives only the files it creates that mode.
func Update(access clientcmd.ConfigAccess, e Entry) (Result, error) {
	start, err := access.GetStartingConfig()
	if err != nil {
		return Result{}, fmt.Errorf("reading the kubeconfig (%s): %w; fix or move that file, or pass --kubeconfig with another one",
			strings.Join(access.GetLoadingPrecedence(), string(os.PathListSeparator)), err)
	}
	merged := Merge(start, e)
	res := Result{File: access.GetDefaultFilename()}
	if loc := merged.Contexts[e.Context].LocationOfOrigin; loc != "" {
		res.File = loc
	}
	// ModifyConfig compares the same way and would write nothing either; checking
	// here lets the command say so.
	if reflect.DeepEqual(*start, *merged) {
		return res, nil
	}
	// relativizePaths=false: the exec command stays the absolute path of the binary,
	// whatever directory the kubeconfig is in.
	if err := clientcmd.ModifyConfig(access, *merged, false); err != nil {
		return Result{}, writeError(res.File, err)
	}
	res.Changed = true
	for _, f := range written(merged, e, access) {
		if err := restrict(f); err != nil {
			return res, fmt.Errorf("the kubeconfig %s was written, but restricting it to its owner failed: %w; run chmod 600 %s", f, err, f)
		}
	}
	return res, nil
}

// written lists the files ModifyConfig wrote kubegate's entries (and the current
// context) to.
func written(merged *clientcmdapi.Config, e Entry, access clientcmd.ConfigAccess) []string {
	files := []string{access.GetDefaultFilename()}
	for _, loc := range []string{merged.Clusters[e.Cluster].LocationOfOrigin, merged.AuthInfos[e.User].LocationOfOrigin, merged.Contexts[e.Context].LocationOfOrigin} {
		if loc != "" && !slices.Contains(files, loc) {
			files = append(files, loc)
		}
	}
	return files
}

// restrict removes group and other permissions from a file, if it exists.
func restrict(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return os.Chmod(path, perm&^0o077)
	}
	return nil
}

// writeError says why the kubeconfig could not be written and what to do.
func writeError(file string, err error) error {
	var pe *fs.PathError
	errors.As(err, &pe)
	switch {
	case pe != nil && errors.Is(err, fs.ErrExist) && strings.HasSuffix(pe.Path, ".lock"):
		return fmt.Errorf("the kubeconfig is locked: %s exists. Another kubectl or kubegate may be writing the kubeconfig; if none is running, delete %s and try again", pe.Path, pe.Path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("the kubeconfig %s is not writable (%v): fix its permissions (or its directory's), or pass --kubeconfig with a file you can write", file, err)
	}
	return fmt.Errorf("writing the kubeconfig %s: %w; pass --kubeconfig with a file you can write", file, err)
}
