package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/appconnector/appconnector/connector/apptype"
)

// manifests decodes every document of the Kubernetes manifests strictly
// (an unknown field is an error) into its k8s.io/api type.
func manifests(t *testing.T) (deployments []*appsv1.Deployment, services []*corev1.Service, configMaps []*corev1.ConfigMap, pdbs []*policyv1.PodDisruptionBudget) {
	t.Helper()
	files, err := filepath.Glob("deploy/kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(data), "\n---\n") {
			where := fmt.Sprintf("%s, document %d", file, i+1)
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			var tm metav1.TypeMeta
			if err := json.Unmarshal(js, &tm); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			var obj any
			switch tm.APIVersion + " " + tm.Kind {
			case "apps/v1 Deployment":
				d := new(appsv1.Deployment)
				deployments, obj = append(deployments, d), d
			case "v1 Service":
				s := new(corev1.Service)
				services, obj = append(services, s), s
			case "v1 ConfigMap":
				c := new(corev1.ConfigMap)
				configMaps, obj = append(configMaps, c), c
			case "policy/v1 PodDisruptionBudget":
				p := new(policyv1.PodDisruptionBudget)
				pdbs, obj = append(pdbs, p), p
			default:
				t.Fatalf("%s: unexpected %s %s", where, tm.APIVersion, tm.Kind)
			}
			dec := json.NewDecoder(bytes.NewReader(js))
			dec.DisallowUnknownFields()
			if err := dec.Decode(obj); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
		}
	}
	return
}

// TestKubernetesManifests checks the manifests' invariants: every
// container non-root, without capabilities or privilege escalation, on a
// read-only root; appconnector's arguments parse with the binary's own
// flag sets; probes ask /healthz of the admin address the container
// serves; the connector runs two replicas behind a UDP Service and a
// disruption budget; the policy ConfigMap parses.
func TestKubernetesManifests(t *testing.T) {
	deployments, services, configMaps, pdbs := manifests(t)
	volumesOK := func(name string, spec corev1.PodSpec, c corev1.Container) {
		for _, m := range c.VolumeMounts {
			if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
				t.Errorf("%s/%s: mount of unknown volume %q", name, c.Name, m.Name)
			}
		}
	}
	var connector *appsv1.Deployment
	for _, d := range deployments {
		spec := d.Spec.Template.Spec
		psc := spec.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65534 {
			t.Errorf("%s: the pod must run as non-root uid 65534", d.Name)
		}
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s: the pod mounts a service account token it does not need", d.Name)
		}
		for _, c := range spec.Containers {
			name := d.Name + "/" + c.Name
			sc := c.SecurityContext
			switch {
			case sc == nil:
				t.Errorf("%s: no securityContext", name)
				continue
			case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
				t.Errorf("%s: runAsNonRoot is not set", name)
			case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
				t.Errorf("%s: privilege escalation is allowed", name)
			case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
				t.Errorf("%s: the root filesystem is writable", name)
			case sc.Privileged != nil && *sc.Privileged:
				t.Errorf("%s: privileged", name)
			case sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0:
				t.Errorf("%s: capabilities must drop ALL and add none", name)
			}
			volumesOK(d.Name, spec, c)
			if !strings.HasPrefix(c.Image, "appconnector:") {
				continue
			}
			admin := checkArgs(t, name, c.Args)
			for what, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
				if p == nil || p.Exec == nil {
					t.Errorf("%s: no %s probe running appconnector status --healthz", name, what)
					continue
				}
				cmd := p.Exec.Command
				var f statusFlags
				fs := statusFlagSet(&f, io.Discard)
				if len(cmd) < 2 || cmd[0] != "/appconnector" || cmd[1] != "status" || fs.Parse(cmd[2:]) != nil || fs.NArg() != 0 || !f.healthz || f.admin != admin {
					t.Errorf("%s: %s probe %q: want /appconnector status --admin %s --healthz (the container's admin API)", name, what, cmd, admin)
				}
			}
			if c.Args[0] == "up" {
				connector = d
			}
		}
	}
	if connector == nil {
		t.Fatal("no connector Deployment")
	}
	if connector.Spec.Replicas == nil || *connector.Spec.Replicas != 2 {
		t.Errorf("the connector runs %v replicas, want 2", connector.Spec.Replicas)
	}
	labels := connector.Spec.Template.Labels
	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	udp := false
	for _, s := range services {
		if !selects(s.Spec.Selector) {
			continue
		}
		for _, p := range s.Spec.Ports {
			port := connector.Spec.Template.Spec.Containers[0].Ports
			udp = udp || p.Protocol == corev1.ProtocolUDP && p.TargetPort.StrVal != "" && slices.ContainsFunc(port, func(cp corev1.ContainerPort) bool {
				return cp.Name == p.TargetPort.StrVal && cp.Protocol == corev1.ProtocolUDP
			})
		}
	}
	if !udp {
		t.Error("no UDP Service reaches the connector's WireGuard port")
	}
	if !slices.ContainsFunc(pdbs, func(p *policyv1.PodDisruptionBudget) bool {
		return p.Spec.Selector != nil && selects(p.Spec.Selector.MatchLabels) && p.Spec.MinAvailable != nil && p.Spec.MinAvailable.IntValue() == 1
	}) {
		t.Error("no PodDisruptionBudget keeping one connector up")
	}
	// The policy the connector reads: a ConfigMap it mounts, and valid.
	found := false
	for _, cm := range configMaps {
		for key, val := range cm.Data {
			if _, err := apptype.ParsePolicy(cm.Name+"/"+key, []byte(val)); err != nil {
				t.Errorf("ConfigMap %s: %v", cm.Name, err)
			}
			found = true
		}
	}
	if !found {
		t.Error("no policy ConfigMap")
	}
}

// checkArgs parses an appconnector container's args with the binary's
// own flag set for its command and returns its --admin address.
func checkArgs(t *testing.T, name string, args []string) string {
	t.Helper()
	if len(args) == 0 {
		t.Errorf("%s: no arguments", name)
		return ""
	}
	switch args[0] {
	case "up":
		var f upFlags
		fs := upFlagSet(&f, io.Discard)
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 {
			t.Errorf("%s: appconnector up %q: %v", name, args[1:], err)
		}
		if f.config == "" || f.policy == "" || f.state == "" || f.admin == "" {
			t.Errorf("%s: up needs --config, --policy, --state and --admin here", name)
		}
		return f.admin
	case "client":
		var f clientFlags
		fs := clientFlagSet(&f, io.Discard)
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 {
			t.Errorf("%s: appconnector client %q: %v", name, args[1:], err)
		}
		if f.config == "" || f.admin == "" {
			t.Errorf("%s: client needs --config and --admin here", name)
		}
		return f.admin
	}
	t.Errorf("%s: unknown command %q", name, args[0])
	return ""
}
