"""The site agent publishes its SuperNode key at start; while Vault refuses (the hub has not made
the site's Vault role yet) it retries with a doubling pause, not on every wake-up of its loop,
and publishes as soon as the role exists. Real OpenBao (JWT auth as the site's ServiceAccount)."""

from __future__ import annotations

import asyncio
import time

from fedcare.hub import vault_footprint as fp
from fedcare.integrations import flower_credentials as fc
from fedcare.integrations.kube import Kube
from fedcare.sandbox import vault_setup
from fedcare.site.work import KEY_RETRY_FIRST, SiteWork
from tests.integration.conftest import FAST
from tests.support.harness import eventually

SITE = "rouen"


async def test_key_publication_backs_off_until_the_role_exists_then_publishes(emulator, tmp_path):
    bao = await asyncio.to_thread(vault_setup.start, tmp_path / "bao")
    try:
        api = Kube.from_url(str(emulator.url), policy=FAST)
        work = SiteWork(api, api, SITE, f"{SITE}/agent-0", namespace="fedcare-training",
                        vault=bao.site_client(SITE), interval=3600.0)
        assert work.credentials is not None
        tries: list[float] = []
        real = work.credentials.ensure_key

        async def counted() -> None:
            tries.append(time.monotonic())
            await real()

        work.credentials.ensure_key = counted        # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(work.run(stop))
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 3.2:      # pod events and the like wake the loop often
                work.wake.set()
                await asyncio.sleep(0.05)
            assert not work.credentials.key_ready
            # at 0, ~1 s and ~3 s (1 s doubling), not once per wake-up (~60 of them); a loaded
            # machine may get fewer in, never more. (That it does retry shows below.)
            assert 1 <= len(tries) <= 3, tries
            assert all(b - a >= KEY_RETRY_FIRST * 0.9 for a, b in zip(tries, tries[1:])), tries

            # The hub makes the site's footprint (policy and JWT role): the key is published at a
            # later attempt, without waking the loop.
            res = await asyncio.to_thread(fp.ensure, bao.hub, fp.site_vault(
                {"metadata": {"name": SITE}, "spec": {}}, "fedcare"), bao.footprint)
            assert res.ok, res
            await eventually(lambda: asyncio.sleep(0, work.credentials.key_ready or None), timeout=15)
            public = await asyncio.to_thread(fc.supernode_public_key, bao.hub, SITE)
            assert public.startswith("ecdsa-sha2-nistp384 ")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await api.close()
    finally:
        bao.stop()


async def test_the_credentials_secret_is_created_from_the_pass_listing_without_a_read(emulator, tmp_path):
    """A work pass lists the site's credentials Secrets anyway (its sweep): a pod's Secret is
    created or left alone from that listing, with no GET per pod and pass; without a listing
    it reads; one created meanwhile (409) is left alone."""
    from fedcare.integrations.kube import Ref
    from fedcare.site import supernode_credentials as creds

    bao = await asyncio.to_thread(vault_setup.start, tmp_path / "bao")
    try:
        res = await asyncio.to_thread(fp.ensure, bao.hub, fp.site_vault(
            {"metadata": {"name": SITE}, "spec": {}}, "fedcare"), bao.footprint)
        assert res.ok, res
        api = Kube.from_url(str(emulator.url), policy=FAST)
        await api.create(Ref("v1", "namespaces"), {"apiVersion": "v1", "kind": "Namespace",
                                                    "metadata": {"name": "fedcare-training"}})
        pod = await api.create(Ref("v1", "pods", "fedcare-training"), {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"fedcare.io/site": SITE}},
            "spec": {"containers": [{"name": "c", "image": "fedcare:dev"}]}})
        reads: list[str] = []
        real_get = api.get_or_none

        async def counted(ref):
            reads.append(ref.name)
            return await real_get(ref)

        api.get_or_none = counted      # type: ignore[method-assign]
        credentials = creds.SupernodeCredentials(bao.site_client(SITE), SITE)
        assert await credentials.ensure_secret(api, pod, exists=False) is True
        assert reads == []
        secret = await real_get(Ref("v1", "secrets", "fedcare-training", creds.secret_name("p1")))
        assert secret is not None and secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        gone, kept = await creds.sweep(api, "fedcare-training", SITE, {"p1"})
        assert gone == [] and kept == {creds.secret_name("p1")}
        assert await credentials.ensure_secret(api, pod, exists=True) is False
        assert await credentials.ensure_secret(api, pod, exists=False) is False      # 409: already there
        assert reads == []
        assert await credentials.ensure_secret(api, pod) is False                     # no listing: it reads
        assert reads == [creds.secret_name("p1")]
        # The pod is made again under the same name (deleted from outside, say): the Secret of the
        # old pod (which the garbage collector would take away from the new one) is made again for it.
        await api.delete(Ref("v1", "pods", "fedcare-training", "p1"))
        again = await api.create(Ref("v1", "pods", "fedcare-training"), {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p1", "labels": {"fedcare.io/site": SITE}},
            "spec": {"containers": [{"name": "c", "image": "fedcare:dev"}]}})
        assert again["metadata"]["uid"] != pod["metadata"]["uid"]
        assert await credentials.ensure_secret(api, again) is True
        secret = await real_get(Ref("v1", "secrets", "fedcare-training", creds.secret_name("p1")))
        assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [again["metadata"]["uid"]]
        assert await credentials.ensure_secret(api, again) is False                   # now it is the pod's own
        gone, kept = await creds.sweep(api, "fedcare-training", SITE, set())           # its pod is gone
        assert gone == [creds.secret_name("p1")] and kept == set()
        await api.close()
    finally:
        bao.stop()
