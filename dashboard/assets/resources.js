// The kinds the Dashboard shows, their API paths and the columns of their tables,
// after `kubectl get` (k8s.io/kubernetes pkg/printers/internalversion/printers.go).

// age formats how long ago a timestamp was, like kubectl's duration.HumanDuration
// in short form: 45s, 12m, 5h, 3d, 2y.
export function age(ts, now = Date.now()) {
  if (!ts) return '';
  const s = Math.max(0, Math.floor((now - Date.parse(ts)) / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  const d = Math.floor(h / 24);
  if (d < 730) return `${d}d`;
  return `${Math.floor(d / 365)}y`;
}

// A cell is text, or {text, cls} for a coloured status.
const created = (o) => ({ age: o.metadata.creationTimestamp });

// podStatus is kubectl's STATUS column: the reason of a waiting or terminated
// container wins over the phase, and a pod being deleted is Terminating.
export function podStatus(pod) {
  const st = pod.status || {};
  let reason = st.reason || st.phase || 'Unknown';
  for (const c of st.initContainerStatuses || []) {
    const s = c.state || {};
    if (s.terminated && s.terminated.exitCode === 0) continue;
    if (s.terminated) { reason = 'Init:' + (s.terminated.reason || 'Error'); break; }
    if (s.waiting && s.waiting.reason && s.waiting.reason !== 'PodInitializing') { reason = 'Init:' + s.waiting.reason; break; }
  }
  if (!reason.startsWith('Init:')) {
    for (const c of st.containerStatuses || []) {
      const s = c.state || {};
      if (s.waiting && s.waiting.reason) reason = s.waiting.reason;
      else if (s.terminated && s.terminated.reason) reason = s.terminated.reason;
    }
  }
  if (pod.metadata.deletionTimestamp) reason = 'Terminating';
  return reason;
}

function statusClass(text) {
  if (['Running', 'Succeeded', 'Completed', 'Complete', 'True', 'Ready'].includes(text)) return 'phase-ok';
  if (['Pending', 'Terminating', 'ContainerCreating', 'Unknown', 'Suspended'].includes(text)) return 'phase-warn';
  return 'phase-bad';
}

const status = (text) => ({ text, cls: statusClass(text) });

function podReady(pod) {
  const cs = (pod.status && pod.status.containerStatuses) || [];
  const total = (pod.spec.containers || []).length;
  return `${cs.filter((c) => c.ready).length}/${total}`;
}

function podRestarts(pod) {
  const cs = (pod.status && pod.status.containerStatuses) || [];
  return String(cs.reduce((n, c) => n + (c.restartCount || 0), 0));
}

function condition(o, type) {
  const c = ((o.status && o.status.conditions) || []).find((x) => x.type === type);
  return c || null;
}

// fluxReady is the Ready condition flux's CLI shows (`flux get kustomizations`).
function fluxReady(o) {
  const c = condition(o, 'Ready');
  if (o.spec && o.spec.suspend) return status('Suspended');
  if (!c) return status('Unknown');
  return status(c.status === 'True' ? 'True' : c.status === 'False' ? 'False' : 'Unknown');
}

function fluxMessage(o) {
  const c = condition(o, 'Ready');
  return c ? c.message || c.reason || '' : '';
}

function ports(svc) {
  return ((svc.spec && svc.spec.ports) || [])
    .map((p) => `${p.port}${p.nodePort ? ':' + p.nodePort : ''}/${p.protocol || 'TCP'}`).join(',') || '<none>';
}

function jobStatus(job) {
  if (condition(job, 'Complete') && condition(job, 'Complete').status === 'True') return status('Complete');
  if (condition(job, 'Failed') && condition(job, 'Failed').status === 'True') return status('Failed');
  if (job.spec && job.spec.suspend) return status('Suspended');
  return status('Running');
}

const num = (v) => String(v || 0);

// kinds: the built-in ones. Flux's are added by discovery (fluxKinds).
export const kinds = [
  {
    id: 'pods', title: 'Pods', group: '', version: 'v1', resource: 'pods', kind: 'Pod',
    columns: ['Ready', 'Status', 'Restarts', 'Age'],
    cells: (o) => [podReady(o), status(podStatus(o)), podRestarts(o), created(o)],
    logs: true, actions: ['delete'],
  },
  {
    id: 'deployments', title: 'Deployments', group: 'apps', version: 'v1', resource: 'deployments', kind: 'Deployment',
    columns: ['Ready', 'Up-to-date', 'Available', 'Age'],
    cells: (o) => [`${num(o.status && o.status.readyReplicas)}/${num(o.spec.replicas)}`,
      num(o.status && o.status.updatedReplicas), num(o.status && o.status.availableReplicas), created(o)],
    actions: ['restart', 'scale'],
  },
  {
    id: 'statefulsets', title: 'StatefulSets', group: 'apps', version: 'v1', resource: 'statefulsets', kind: 'StatefulSet',
    columns: ['Ready', 'Age'],
    cells: (o) => [`${num(o.status && o.status.readyReplicas)}/${num(o.spec.replicas)}`, created(o)],
    actions: ['scale'],
  },
  {
    id: 'daemonsets', title: 'DaemonSets', group: 'apps', version: 'v1', resource: 'daemonsets', kind: 'DaemonSet',
    columns: ['Desired', 'Current', 'Ready', 'Up-to-date', 'Available', 'Age'],
    cells: (o) => {
      const s = o.status || {};
      return [num(s.desiredNumberScheduled), num(s.currentNumberScheduled), num(s.numberReady),
        num(s.updatedNumberScheduled), num(s.numberAvailable), created(o)];
    },
    actions: [],
  },
  {
    id: 'jobs', title: 'Jobs', group: 'batch', version: 'v1', resource: 'jobs', kind: 'Job',
    columns: ['Status', 'Completions', 'Age'],
    cells: (o) => [jobStatus(o), `${num(o.status && o.status.succeeded)}/${o.spec.completions == null ? 1 : o.spec.completions}`, created(o)],
    actions: [],
  },
  {
    id: 'cronjobs', title: 'CronJobs', group: 'batch', version: 'v1', resource: 'cronjobs', kind: 'CronJob',
    columns: ['Schedule', 'Suspend', 'Active', 'Last schedule', 'Age'],
    cells: (o) => [o.spec.schedule || '', o.spec.suspend ? 'True' : 'False',
      String(((o.status && o.status.active) || []).length),
      { age: o.status && o.status.lastScheduleTime }, created(o)],
    actions: [],
  },
  {
    id: 'services', title: 'Services', group: '', version: 'v1', resource: 'services', kind: 'Service',
    columns: ['Type', 'Cluster-IP', 'Ports', 'Age'],
    cells: (o) => [o.spec.type || 'ClusterIP', o.spec.clusterIP || '<none>', ports(o), created(o)],
    actions: [],
  },
];

// The Flux groups the Dashboard knows; the version used is the one the cluster's
// discovery prefers (Kustomization v1, HelmRelease v2 in Flux 2.x: fluxcd.io/flux/components/).
export const fluxGroups = [
  { group: 'kustomize.toolkit.fluxcd.io', id: 'kustomizations', title: 'Flux Kustomizations', resource: 'kustomizations', kind: 'Kustomization' },
  { group: 'helm.toolkit.fluxcd.io', id: 'helmreleases', title: 'Flux HelmReleases', resource: 'helmreleases', kind: 'HelmRelease' },
];

export function fluxKinds(groupList) {
  const out = [];
  for (const fg of fluxGroups) {
    const g = ((groupList && groupList.groups) || []).find((x) => x.name === fg.group);
    if (!g || !g.preferredVersion) continue;
    out.push({
      ...fg, version: g.preferredVersion.version, flux: true,
      columns: ['Ready', 'Status', 'Suspended', 'Age'],
      cells: (o) => [fluxReady(o), fluxMessage(o), o.spec && o.spec.suspend ? 'True' : 'False', created(o)],
      actions: ['reconcile', 'suspend', 'resume'],
    });
  }
  return out;
}

function groupVersion(kind) {
  return kind.group ? `/apis/${kind.group}/${kind.version}` : `/api/${kind.version}`;
}

// collectionPath is where a namespaced kind's objects are listed and watched.
export function collectionPath(kind, ns) {
  return `${groupVersion(kind)}/namespaces/${encodeURIComponent(ns)}/${kind.resource}`;
}

export function objectPath(kind, ns, name) {
  return `${collectionPath(kind, ns)}/${encodeURIComponent(name)}`;
}
