package dataplane

import (
	"context"
	"fmt"
	"os"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/fsnotify/fsnotify"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// watchFile is Envoy's filesystem subscription for the generic secret
// (sds_config.path_config_source, what a service mesh's proxy uses for kubegate's
// agent token, envoy.FileSDSConfigSource). It reads the file at start and again
// whenever an entry of watched_directory is moved to: "If configured, this
// directory will be watched for *moves*. When an entry in this directory is moved
// to, the path will be reloaded" (config_source.proto,
// PathConfigSource.watched_directory). The file holds one DiscoveryResponse in
// JSON or YAML; an update that does not read, parse or pass SdsApi's checks is
// rejected and the last good secret stays (accept, as for gRPC). Each reload
// reads the generic secret's filename again, which is how a rotated token file
// is picked up.
//
// fsnotify reports inotify's IN_MOVED_TO and IN_CREATE alike as Create, so this
// also reloads on a plain create in the directory, which Envoy ignores; a
// reload of unchanged content changes nothing.
func (w *secretWatcher) watchFile(ctx context.Context) {
	fw, err := fsnotify.NewWatcher()
	if err == nil {
		err = fw.Add(w.cfg.sdsWatchedDir)
	}
	if err != nil {
		w.log.Error("cannot watch the SDS directory; the credential injector answers 401", "dir", w.cfg.sdsWatchedDir, "error", err)
		w.once.Do(func() { close(w.ready) })
		return
	}
	defer fw.Close()
	w.reloadFile()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-fw.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) {
				w.reloadFile()
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return
			}
			w.log.Warn("watching the SDS directory", "dir", w.cfg.sdsWatchedDir, "error", err)
		}
	}
}

func (w *secretWatcher) reloadFile() {
	err := w.readFile()
	if err != nil {
		w.log.Warn("SDS file update rejected; keeping the last good secret", "secret", w.cfg.secretName, "path", w.cfg.sdsPath, "error", err)
		w.once.Do(func() { close(w.ready) })
	}
}

func (w *secretWatcher) readFile() error {
	data, err := os.ReadFile(w.cfg.sdsPath)
	if err != nil {
		return err
	}
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("%s: %w", w.cfg.sdsPath, err)
	}
	var resp discoveryv3.DiscoveryResponse
	if err := protojson.Unmarshal(j, &resp); err != nil {
		return fmt.Errorf("%s is not a DiscoveryResponse: %w", w.cfg.sdsPath, err)
	}
	return w.accept(&resp)
}
