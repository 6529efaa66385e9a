package policy

import (
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestParseRequestQuery: the query-derived attributes are read as the API server
// reads them: selectors only where RequestInfo reports them, the first of repeated
// values, dryRun/fieldManager only for the verbs whose handlers decode them.
func TestParseRequestQuery(t *testing.T) {
	tests := []struct {
		name, method, target string
		want                 Request
	}{
		{"field selector names the object", "GET", "/api/v1/namespaces/demo/pods?fieldSelector=metadata.name%3Dweb",
			Request{Verb: "list", Name: "web", FieldSelector: "metadata.name=web"}},
		{"label selector of a watch", "GET", "/api/v1/namespaces/demo/pods?watch=true&labelSelector=app%3Dweb",
			Request{Verb: "watch", LabelSelector: "app=web"}},
		{"watch without a value is a watch", "GET", "/api/v1/namespaces/demo/pods?watch=",
			Request{Verb: "watch"}},
		{"watch=0 is a list", "GET", "/api/v1/namespaces/demo/pods?watch=0",
			Request{Verb: "list"}},
		{"first of repeated values, as the API server", "GET", "/api/v1/namespaces/demo/pods?watch=false&watch=true&fieldSelector=a%3Db&fieldSelector=c%3Dd",
			Request{Verb: "list", FieldSelector: "a=b"}},
		{"selectors of a get are ignored", "GET", "/api/v1/namespaces/demo/pods/web?fieldSelector=a%3Db",
			Request{Verb: "get", Name: "web"}},
		{"deletecollection keeps its selector", "DELETE", "/api/v1/namespaces/demo/pods?labelSelector=app%3Dweb",
			Request{Verb: "deletecollection", LabelSelector: "app=web"}},
		{"dry-run create with field manager", "POST", "/api/v1/namespaces/demo/pods?dryRun=All&fieldManager=kubectl-client-side-apply",
			Request{Verb: "create", DryRun: true, FieldManager: "kubectl-client-side-apply"}},
		{"dry-run delete", "DELETE", "/api/v1/namespaces/demo/pods/web?dryRun=All",
			Request{Verb: "delete", Name: "web", DryRun: true}},
		{"patch field manager", "PATCH", "/api/v1/namespaces/demo/pods/web?fieldManager=me&force=true",
			Request{Verb: "patch", Name: "web", FieldManager: "me"}},
		{"dryRun of a get is not read", "GET", "/api/v1/namespaces/demo/pods/web?dryRun=All&fieldManager=x",
			Request{Verb: "get", Name: "web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequest(tt.method, tt.target)
			if err != nil {
				t.Fatal(err)
			}
			q := Request{Verb: got.Verb, Name: got.Name, FieldSelector: got.FieldSelector, LabelSelector: got.LabelSelector, DryRun: got.DryRun, FieldManager: got.FieldManager}
			if q != tt.want {
				t.Fatalf("got %+v\nwant %+v", q, tt.want)
			}
		})
	}
}

// TestSingleValuedParametersMatchTheAPI checks the list of single-valued
// parameters against the option structs the API server decodes from the query, so
// a new option in a Kubernetes update is not silently repeatable.
func TestSingleValuedParametersMatchTheAPI(t *testing.T) {
	var single, lists []string
	for _, v := range []any{
		metav1.ListOptions{}, metav1.GetOptions{}, metav1.DeleteOptions{}, metav1.CreateOptions{},
		metav1.PatchOptions{}, metav1.UpdateOptions{}, metav1.TableOptions{},
		corev1.PodLogOptions{}, corev1.PodAttachOptions{}, corev1.PodExecOptions{}, corev1.PodPortForwardOptions{},
		corev1.PodProxyOptions{}, corev1.NodeProxyOptions{}, corev1.ServiceProxyOptions{},
	} {
		queryFields(reflect.TypeOf(v), &single, &lists)
	}
	if !slices.Contains(single, "watch") || !slices.Contains(lists, "command") {
		t.Fatalf("the option structs were not read: %v %v", single, lists)
	}
	for _, name := range single {
		if !SingleValuedParameter(name) {
			t.Errorf("the API server reads %s as one value, but SingleValuedParameter(%q) is false", name, name)
		}
	}
	for _, name := range lists {
		if name == "dryRun" {
			continue // a list that means one thing; deliberately single (see SingleValuedParameter)
		}
		if SingleValuedParameter(name) || !MultiValuedParameters.Has(name) {
			t.Errorf("the API server reads %s as a list: it must be in MultiValuedParameters and not single-valued", name)
		}
	}
	for _, name := range MultiValuedParameters.List() {
		if SingleValuedParameter(name) {
			t.Errorf("%s is both single- and multi-valued", name)
		}
	}
}

// queryFields collects the query names (json tags, as the query parameter codec
// uses them) of rt's fields, split into single values and lists.
func queryFields(rt reflect.Type, single, lists *[]string) {
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous {
			if f.Type != reflect.TypeOf(metav1.TypeMeta{}) {
				queryFields(f.Type, single, lists)
			}
			continue
		}
		if name == "" || name == "-" || f.Type == reflect.TypeOf(&metav1.Preconditions{}) {
			continue // DeleteOptions.preconditions comes only in a body
		}
		k := f.Type.Kind()
		if k == reflect.Pointer {
			k = f.Type.Elem().Kind()
		}
		if k == reflect.Slice {
			*lists = append(*lists, name)
		} else {
			*single = append(*single, name)
		}
	}
	sort.Strings(*single)
}
