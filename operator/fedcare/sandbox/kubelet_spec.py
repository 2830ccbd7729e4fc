"""A pod's environment and volumes, resolved from the API as a kubelet does.

``Waiting`` carries the reason a container cannot start yet, with a message naming the
field and the missing object (never a value: Secret data never reaches a log or status).
"""

from __future__ import annotations

import base64
import os
import pathlib
import re
import shutil
from dataclasses import dataclass
from typing import Any

from ..integrations.kube import Kube, KubeError, NotFound, Ref
from .kubelet_translate import expand

__all__ = ["Volume", "Waiting", "container_env", "pod_volumes"]


class Waiting(Exception):
    """The container cannot start (yet): ``reason`` and ``message`` go to its waiting state."""

    def __init__(self, reason: str, message: str, *, retry: bool = True):
        self.reason, self.message, self.retry = reason, message, retry
        super().__init__(f"{reason}: {message}")


@dataclass(frozen=True)
class Volume:
    path: pathlib.Path
    always_read_only: bool = False   # ConfigMap, Secret, downwardAPI: files are written read-only


class _Objects:
    """ConfigMaps and Secrets read once per container start."""

    def __init__(self, kube: Kube, namespace: str):
        self.kube, self.namespace, self.cache = kube, namespace, {}

    async def get(self, plural: str, name: str) -> dict[str, Any] | None:
        key = (plural, name)
        if key not in self.cache:
            try:
                self.cache[key] = await self.kube.get(Ref("v1", plural, self.namespace, name))
            except NotFound:
                self.cache[key] = None
        return self.cache[key]

    async def data(self, plural: str, name: str) -> dict[str, str] | None:
        obj = await self.get(plural, name)
        if obj is None:
            return None
        if plural == "secrets":
            return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})


_KIND = {"configmaps": "configmap", "secrets": "secret"}
_FIELD_RE = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_value(pod: dict[str, Any], path: str) -> str:
    md, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    if m := _FIELD_RE.match(path):
        return (md.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {"metadata.name": md.get("name"), "metadata.namespace": md.get("namespace"),
              "metadata.uid": md.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName"),
              "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
              "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
              "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or [])}
    if path not in simple:
        raise Waiting("CreateContainerConfigError", f"fieldRef {path!r} is not supported (metadata.name, "
                      "metadata.namespace, metadata.uid, metadata.labels['k'], metadata.annotations['k'], "
                      "spec.nodeName, spec.serviceAccountName, status.podIP(s), status.hostIP(s))", retry=False)
    return simple[path] or ""


async def container_env(kube: Kube, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """``envFrom`` then ``env`` (in order, each value ``$(VAR)``-expanded against the earlier ones)."""
    objects = _Objects(kube, pod["metadata"]["namespace"])
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for plural, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            data = await objects.data(plural, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise Waiting("CreateContainerConfigError", f'envFrom: {_KIND[plural]} "{ref.get("name")}" not found')
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"].get("fieldPath", ""))
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            plural, key = ("secrets", "secretKeyRef") if "secretKeyRef" in source else ("configmaps", "configMapKeyRef")
            ref = source[key]
            data = await objects.data(plural, ref.get("name", ""))
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                what = (f'{_KIND[plural]} "{ref.get("name")}" not found' if data is None else
                        f'couldn\'t find key {ref.get("key")} in {_KIND[plural].capitalize()} '
                        f'{pod["metadata"]["namespace"]}/{ref.get("name")}')
                raise Waiting("CreateContainerConfigError", f"env {name}: {what}")
            env[name] = data[ref["key"]]
        else:
            raise Waiting("CreateContainerConfigError", f"env {name}: valueFrom {sorted(source)} is not supported "
                          "by the sandbox kubelet (fieldRef, secretKeyRef, configMapKeyRef are)", retry=False)
    return env


def _write_files(target: pathlib.Path, files: dict[str, tuple[str | bytes, int]]) -> None:
    """Write a read-only file set (as a kubelet's atomic writer would: all or nothing)."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        _make_writable(tmp)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for rel, (content, mode) in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        path.chmod(mode & ~0o222)
    if target.exists():
        _make_writable(target)
        shutil.rmtree(target)
    tmp.rename(target)
    for sub in [target, *(p for p in target.rglob("*") if p.is_dir())]:
        sub.chmod(0o555)


def _make_writable(root: pathlib.Path) -> None:
    for sub in [root, *root.rglob("*")]:
        if sub.is_dir():
            sub.chmod(0o755)


async def _projection(objects: _Objects, plural: str, name: str, spec: dict[str, Any],
                      volume: str) -> dict[str, tuple[str | bytes, int]] | None:
    obj = await objects.get(plural, name)
    if obj is None:
        if spec.get("optional"):
            return {}
        raise Waiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}": '
                      f'{_KIND[plural]} "{name}" not found')
    if plural == "secrets":
        data: dict[str, str | bytes] = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    else:
        data = {**(obj.get("data") or {}),
                **{k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}}
    mode = int(spec.get("defaultMode", 0o644))
    items = spec.get("items")
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    files = {}
    for item in items:
        if item["key"] not in data:
            if spec.get("optional"):
                continue
            raise Waiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}": '
                          f'key "{item["key"]}" not found in {_KIND[plural]} "{name}"')
        files[item.get("path", item["key"])] = (data[item["key"]], int(item.get("mode", mode)))
    return files


async def pod_volumes(kube: Kube, pod: dict[str, Any], pod_dir: pathlib.Path,
                      kubelet_dir: pathlib.Path) -> dict[str, Volume]:
    """Each of the pod's volumes as a local folder (created or written now)."""
    ns = pod["metadata"]["namespace"]
    objects = _Objects(kube, ns)
    volumes: dict[str, Volume] = {}
    for spec in (pod.get("spec") or {}).get("volumes") or []:
        name = spec["name"]
        if "emptyDir" in spec:
            path = pod_dir / "volumes" / "empty-dir" / name
            path.mkdir(parents=True, exist_ok=True)
            volumes[name] = Volume(path)
        elif "configMap" in spec or "secret" in spec:
            plural, key, ref = (("configmaps", "configMap", "name") if "configMap" in spec
                                else ("secrets", "secret", "secretName"))
            files = await _projection(objects, plural, spec[key].get(ref, ""), spec[key], name)
            path = pod_dir / "volumes" / _KIND[plural] / name
            _write_files(path, files or {})
            volumes[name] = Volume(path, always_read_only=True)
        elif "downwardAPI" in spec:
            mode = int(spec["downwardAPI"].get("defaultMode", 0o644))
            files = {item["path"]: (field_value(pod, item["fieldRef"]["fieldPath"]), int(item.get("mode", mode)))
                     for item in spec["downwardAPI"].get("items") or [] if "fieldRef" in item}
            path = pod_dir / "volumes" / "downward-api" / name
            _write_files(path, files)
            volumes[name] = Volume(path, always_read_only=True)
        elif "projected" in spec:
            files = await _projected(kube, objects, pod, spec["projected"], name)
            path = pod_dir / "volumes" / "projected" / name
            _write_files(path, files)
            volumes[name] = Volume(path, always_read_only=True)
        elif "persistentVolumeClaim" in spec:
            volumes[name] = Volume(await _claim_path(kube, ns, spec["persistentVolumeClaim"].get("claimName", ""),
                                                     name, kubelet_dir))
        elif "hostPath" in spec:
            volumes[name] = Volume(_host_path(spec["hostPath"], name))
        else:
            kinds = sorted(set(spec) - {"name"})
            raise Waiting("CreateContainerConfigError", f'volume "{name}": {kinds} volumes are not supported by the '
                          "sandbox kubelet (emptyDir, configMap, secret, downwardAPI, projected, persistentVolumeClaim, "
                          "hostPath are)", retry=False)
    return volumes


async def _projected(kube: Kube, objects: _Objects, pod: dict[str, Any], spec: dict[str, Any],
                     volume: str) -> dict[str, tuple[str | bytes, int]]:
    """A projected volume (what a real API server adds to every pod for its ServiceAccount:
    a bound token from the TokenRequest API, ``kube-root-ca.crt``, the namespace)."""
    mode = int(spec.get("defaultMode", 0o644))
    files: dict[str, tuple[str | bytes, int]] = {}
    for source in spec.get("sources") or []:
        if "serviceAccountToken" in source:
            files[source["serviceAccountToken"].get("path", "token")] = (
                await _token(kube, pod, source["serviceAccountToken"], volume), mode)
        elif "configMap" in source or "secret" in source:
            plural, key = ("configmaps", "configMap") if "configMap" in source else ("secrets", "secret")
            part = await _projection(objects, plural, source[key].get("name", ""), {"defaultMode": mode, **source[key]},
                                     volume)
            files.update(part or {})
        elif "downwardAPI" in source:
            for item in source["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    files[item["path"]] = (field_value(pod, item["fieldRef"]["fieldPath"]), int(item.get("mode", mode)))
        else:
            raise Waiting("CreateContainerConfigError", f'volume "{volume}": projected source {sorted(source)} is '
                          "not supported by the sandbox kubelet", retry=False)
    return files


async def _token(kube: Kube, pod: dict[str, Any], spec: dict[str, Any], volume: str) -> str:
    md = pod["metadata"]
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": [spec["audience"]] if spec.get("audience") else [],
                     "expirationSeconds": int(spec.get("expirationSeconds", 3607)),
                     "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": md["name"], "uid": md["uid"]}}}
    try:
        answer = await kube.request("POST", Ref("v1", "serviceaccounts", md["namespace"], sa).path + "/token", body=body)
    except KubeError as err:
        raise Waiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}": the ServiceAccount '
                      f'token for "{sa}" could not be requested ({err.status} {err.reason})') from None
    token = (answer.get("status") or {}).get("token")
    if not token:
        raise Waiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}": the TokenRequest for '
                      f'"{sa}" returned no token')
    return token


async def _claim_path(kube: Kube, ns: str, claim: str, volume: str, kubelet_dir: pathlib.Path) -> pathlib.Path:
    """A PVC bound to a hostPath/local PersistentVolume is that folder; any other PVC is the
    kubelet's folder ``DIR/volumes/pvc/<namespace>/<claim>-<uid8>``: it outlives the pod, as a
    PVC does, and a claim deleted and made again under the same name is a new, empty volume, as
    a dynamically provisioned one is (a reused folder once handed a resumed round its previous
    attempt's SuperLink state)."""
    try:
        pvc = await kube.get(Ref("v1", "persistentvolumeclaims", ns, claim))
    except NotFound:
        raise Waiting("ContainerCreating", f'volume "{volume}": persistentvolumeclaim "{claim}" not found') from None
    pv_name = (pvc.get("spec") or {}).get("volumeName")
    if pv_name:
        pv = await kube.get_or_none(Ref("v1", "persistentvolumes", None, pv_name))
        source = (pv or {}).get("spec") or {}
        local = (source.get("hostPath") or source.get("local") or {}).get("path")
        if local:
            return pathlib.Path(local)
    uid = str(pvc["metadata"].get("uid") or "")[:8]
    path = kubelet_dir / "volumes" / "pvc" / ns / (f"{claim}-{uid}" if uid else claim)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _host_path(spec: dict[str, Any], volume: str) -> pathlib.Path:
    path, kind = pathlib.Path(spec.get("path", "")), spec.get("type", "")
    if kind == "DirectoryOrCreate":
        path.mkdir(parents=True, exist_ok=True)
    elif kind == "FileOrCreate" and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    elif (kind == "Directory" and not path.is_dir()) or (kind == "File" and not path.is_file()):
        raise Waiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume}": hostPath type check '
                      f"failed: {path} is not a {kind.lower()}")
    return path


def mount_map(container: dict[str, Any], volumes: dict[str, Volume]) -> dict[str, str]:
    """``mountPath → local folder`` for one container (``subPath`` included)."""
    mounts: dict[str, str] = {}
    for m in container.get("volumeMounts") or []:
        vol = volumes.get(m.get("name", ""))
        if vol is None:
            raise Waiting("CreateContainerConfigError", f'volumeMount "{m.get("name")}": no volume of that name '
                          "in the pod", retry=False)
        local = vol.path / m["subPath"] if m.get("subPath") else vol.path
        if m.get("subPath") and not local.exists():
            local.mkdir(parents=True, exist_ok=True)
        mounts[m["mountPath"]] = os.fspath(local)
    return mounts
