#!/usr/bin/python3
"""Checks deploy/ against the real moe-routerd, so the files cannot drift:

- Prometheus: promtool accepts the config and rules, and the rules' unit
  tests (deploy/prometheus/rules_test.yml) pass.
- moe-routerd starts on the Kubernetes ConfigMap's models.json, and every
  metric the rules and the Grafana dashboard query is in its /metrics.
- Every flag the StatefulSet passes is a flag moe-routerd has; the probes,
  Envoy's upstream and Prometheus' target use the ports those flags set.
- HAProxy and Envoy follow the same rules: the same hash keys in the same
  order (the headers the clients send), consistent hashing, /readyz on the
  metrics port with the same interval and threshold (shorter than the
  StatefulSet's drain notice), only retries of calls that reached no
  replica, and timeouts that keep long streams open. HAProxy (Debian's)
  accepts its file, and its servers are the StatefulSet's pods.
- The Dockerfile's runtime stage installs (itself or through what apt pulls
  in) every shared library the two binaries it copies load.

    deploy_test.py DEPLOY_DIR MOE_ROUTERD PROMTOOL MOE_ROUTER_CLI
"""
import json
import os
import shutil
import re
import subprocess
import sys
import tempfile
import unittest
import urllib.request

import yaml

DEPLOY, ROUTERD, PROMTOOL, CLI = sys.argv[1:5]


def load_yaml_docs(*parts):
    with open(os.path.join(DEPLOY, *parts)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def router_container():
    (statefulset,) = load_yaml_docs("kubernetes", "statefulset.yaml")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    return statefulset, container


def flag_values(container):
    out = {}
    for arg in container["args"]:
        name, _, value = arg.lstrip("-").partition("=")
        out[name] = value
    return out


def haproxy_lines(*sections):
    """deploy/haproxy/haproxy.cfg's statements in the named sections, e.g.
    ("defaults",), ("backend", "moe_router"): stripped, comments dropped."""
    out, current = [], None
    with open(os.path.join(DEPLOY, "haproxy", "haproxy.cfg")) as f:
        for raw in f:
            line = raw.split("#", 1)[0].rstrip()
            if not line:
                continue
            if not line.startswith(" "):
                current = tuple(line.split())
                continue
            if current in sections:
                out.append(line.strip())
    return out


def seconds(text):
    """An HAProxy or Envoy duration ("1h", "3600s", "1s", "500ms") in seconds."""
    for suffix, factor in (("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(suffix) and text[:-len(suffix)].isdigit():
            return int(text[:-len(suffix)]) * factor
    raise ValueError(text)


def source_constant(relative, name):
    """The string value of `inline constexpr char name[] = "...";`."""
    with open(os.path.join(DEPLOY, "..", relative)) as f:
        return re.search(name + r'\[\] = "([^"]+)"', f.read()).group(1)


# server/memory_limit.h: kServerHeadroomBytes.
SERVER_HEADROOM_BYTES = 512 << 20


def quantity_bytes(text):
    """A Kubernetes memory quantity ("768Mi", "2Gi", "1000000") in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(text[:-len(suffix)]) * factor
    return int(text)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def metric_names_queried(text):
    # Recording rules (with colons) are ours, not exported names.
    return set(re.findall(r"\b(moe_router_[a-z_]+)\b", text))


class DeployTest(unittest.TestCase):
    def test_prometheus_config_and_rules(self):
        for args in (["check", "config", "prometheus/prometheus.yml"],
                     ["test", "rules", "prometheus/rules_test.yml"]):
            r = subprocess.run([PROMTOOL] + args, cwd=DEPLOY, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_queried_metrics_are_exported_by_a_server_on_the_configmap(self):
        (configmap,) = load_yaml_docs("kubernetes", "configmap.yaml")
        with tempfile.NamedTemporaryFile("w", suffix=".json") as config:
            config.write(configmap["data"]["models.json"])
            config.flush()
            # The models must fit the manifest's memory limit: the server
            # refuses to start otherwise.
            _, container = router_container()
            server = subprocess.Popen(
                [ROUTERD, "--listen=127.0.0.1:0", "--health_listen=",
                 "--metrics_listen=127.0.0.1:0", f"--config={config.name}",
                 f"--memory_limit={flag_values(container)['memory_limit']}"],
                stderr=subprocess.PIPE, text=True)
            try:
                metrics_port = None
                for line in server.stderr:
                    m = re.search(r"metrics on port (\d+)", line)
                    if m:
                        metrics_port = int(m.group(1))
                        break
                self.assertIsNotNone(metrics_port, "moe-routerd did not start on the ConfigMap")
                body = urllib.request.urlopen(
                    f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            finally:
                server.terminate()
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()  # a hung drain fails the test, never hangs it
                    server.wait()
                    raise
                finally:
                    server.stderr.close()
        exported = set(re.findall(r"^(moe_router_[a-z_]+)", body, re.M))
        with open(os.path.join(DEPLOY, "prometheus", "rules.yml")) as f:
            queried = metric_names_queried(f.read())
        with open(os.path.join(DEPLOY, "grafana", "moe-router-dashboard.json")) as f:
            dashboard = json.load(f)
        for panel in dashboard["panels"]:
            self.assertTrue(panel["targets"], panel["title"])
            for target in panel["targets"]:
                queried |= metric_names_queried(target["expr"])
        self.assertGreater(len(queried), 10)
        self.assertEqual(sorted(queried - exported), [], "queried but not exported")

    def test_manifests_use_real_flags_and_consistent_ports(self):
        helpfull = subprocess.run([ROUTERD, "--helpfull"], capture_output=True, text=True)
        known = set(re.findall(r"^\s+--([a-z_]+) ", helpfull.stdout + helpfull.stderr, re.M))
        self.assertIn("listen", known)
        statefulset, container = router_container()
        flags = flag_values(container)
        self.assertEqual(sorted(set(flags) - known), [], "flags moe-routerd does not have")

        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(ports["grpc"], port_of(flags["listen"]))
        self.assertEqual(ports["health"], port_of(flags["health_listen"]))
        self.assertEqual(ports["metrics"], port_of(flags["metrics_listen"]))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            self.assertEqual(container[probe]["grpc"]["port"], ports["health"], probe)
        self.assertEqual(container["readinessProbe"]["grpc"]["service"], "readiness")
        # The kubelet's SIGKILL must not cut the notice and drain short.
        drain = seconds(flags["drain_notice"]) + seconds(flags["drain_timeout"])
        self.assertGreater(statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
                           drain)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        self.assertTrue(flags["config"].startswith(mounts["models"] + "/"))
        self.assertEqual(flags["state_dir"], mounts["state"])

        (envoy,) = load_yaml_docs("envoy", "envoy.yaml")
        (cluster,) = envoy["static_resources"]["clusters"]
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        self.assertEqual(address["port_value"], ports["grpc"])
        services = {d["metadata"]["name"]: d for d in load_yaml_docs("kubernetes", "service.yaml")}
        self.assertEqual(address["address"], statefulset["spec"]["serviceName"])
        self.assertIn(address["address"], services)

        # The container's memory limit is what the models may reserve plus the
        # server's own headroom, so the OOM killer never acts before
        # RegisterModel refuses.
        resources = container["resources"]
        self.assertEqual(quantity_bytes(resources["limits"]["memory"]),
                         quantity_bytes(flags["memory_limit"]) + SERVER_HEADROOM_BYTES)
        self.assertLessEqual(quantity_bytes(resources["requests"]["memory"]),
                             quantity_bytes(resources["limits"]["memory"]))

        # The ServiceMonitor scrapes the Service in front of the replicas, on
        # the port that serves /metrics.
        (monitor,) = load_yaml_docs("kubernetes", "servicemonitor.yaml")
        self.assertEqual(monitor["kind"], "ServiceMonitor")
        selected = [d for d in services.values()
                    if all(d["metadata"]["labels"].get(k) == v
                           for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
        self.assertEqual([d["metadata"]["name"] for d in selected],
                         [statefulset["spec"]["serviceName"]])
        (endpoint,) = monitor["spec"]["endpoints"]
        self.assertEqual(endpoint["path"], "/metrics")
        (service_port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
        self.assertEqual(service_port["targetPort"], "metrics")

        (prometheus,) = load_yaml_docs("prometheus", "prometheus.yml")
        sd = prometheus["scrape_configs"][0]["dns_sd_configs"][0]
        self.assertEqual(sd["port"], ports["metrics"])
        self.assertTrue(sd["names"][0].startswith(statefulset["spec"]["serviceName"] + "."))

    def test_haproxy_and_envoy_follow_the_same_rules(self):
        statefulset, container = router_container()
        flags = flag_values(container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        model_header = source_constant("client/client.h", "kModelHeader")
        cache_header = source_constant("client/client.h", "kCacheHeader")
        refused_trailer = source_constant("proto/grpc_status.h", "kRefusedTrailer")

        backend = haproxy_lines(("backend", "moe_router"))
        defaults = haproxy_lines(("defaults",))
        (envoy,) = load_yaml_docs("envoy", "envoy.yaml")
        (cluster,) = envoy["static_resources"]["clusters"]
        (listener,) = envoy["static_resources"]["listeners"]
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        (route,) = [r["route"] for r in manager["route_config"]["virtual_hosts"][0]["routes"]
                    if r["match"]["prefix"] == "/moe_router.v1.MoeRouter/"]

        # Hash keys: the cache, else the model; consistently.
        haproxy_keys = re.findall(r"set-var\(txn\.moe_key\) req\.hdr\(([a-z-]+)\)",
                                  "\n".join(backend))
        self.assertIn("balance hash var(txn.moe_key)", backend)
        self.assertIn("hash-type consistent", backend)
        envoy_keys = [p["header"]["header_name"] for p in route["hash_policy"]]
        self.assertEqual(haproxy_keys, [cache_header, model_header])
        self.assertEqual(envoy_keys, haproxy_keys)
        self.assertTrue(route["hash_policy"][0].get("terminal"), "the cache alone when present")
        self.assertIn(cluster["lb_policy"], ("RING_HASH", "MAGLEV"))

        # Health: GET /readyz on the metrics port, same interval and threshold,
        # shorter than the drain notice.
        self.assertIn("http-check send meth GET uri /readyz", backend)
        self.assertIn("http-check expect status 200", backend)
        (default_server,) = [l for l in backend if l.startswith("default-server")]
        words = default_server.split()
        value = lambda key: words[words.index(key) + 1]
        self.assertEqual(int(value("port")), ports["metrics"])
        (check,) = cluster["health_checks"]
        self.assertEqual(check["http_health_check"]["path"], "/readyz")
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        self.assertEqual(endpoint["endpoint"]["health_check_config"]["port_value"],
                         ports["metrics"])
        self.assertEqual(seconds(value("inter")), seconds(check["interval"]))
        self.assertEqual(int(value("fall")), check["unhealthy_threshold"])
        self.assertEqual(int(value("rise")), check["healthy_threshold"])
        self.assertLess(seconds(value("inter")) * int(value("fall")), seconds(flags["drain_notice"]))

        # Retries: only what reached no replica.
        self.assertIn("retry-on conn-failure", defaults)
        self.assertIn("option redispatch 1", defaults)
        retry = route["retry_policy"]
        self.assertLessEqual(set(retry["retry_on"].split(",")),
                             {"connect-failure", "refused-stream", "retriable-headers"})
        self.assertEqual([h["name"] for h in retry["retriable_headers"]], [refused_trailer])

        # Long streams stay open: an hour of idleness at least, no call timeout.
        for line in ("timeout client", "timeout server"):
            (timeout,) = [l for l in defaults if l.startswith(line + " ")]
            self.assertGreaterEqual(seconds(timeout.split()[-1]), 3600, line)
        self.assertGreaterEqual(seconds(manager["stream_idle_timeout"]), 3600)
        self.assertEqual(route["timeout"], "0s")

        # HAProxy's servers are the StatefulSet's pods on its gRPC port.
        name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
        servers = [l.split() for l in backend if l.startswith("server ")]
        self.assertGreaterEqual(len(servers), statefulset["spec"]["replicas"])
        for i, (_, server_name, address) in enumerate(servers):
            self.assertEqual(server_name, f"{name}-{i}")
            self.assertEqual(address, f"{name}-{i}.{service}:{ports['grpc']}")
        checked = subprocess.run([shutil.which("haproxy") or "/usr/sbin/haproxy", "-c", "-f",
                                  os.path.join(DEPLOY, "haproxy", "haproxy.cfg")],
                                 capture_output=True, text=True)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def test_the_image_installs_every_library_the_binaries_load(self):
        with open(os.path.join(os.path.dirname(DEPLOY), "Dockerfile")) as f:
            runtime_stage = f.read().rsplit("\nFROM ", 1)[1]
        install = re.search(r"apt-get install((?:[^&]|&(?!&))*)&&", runtime_stage).group(1)
        listed = [w for w in install.split() if not w.startswith("-") and w != "\\"]
        depends = subprocess.run(
            ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
             "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + listed,
            capture_output=True, text=True, check=True).stdout
        installed = {line.strip().split(":")[0] for line in depends.splitlines()
                     if line and not line[0].isspace()}
        needed = {}
        for binary in (ROUTERD, CLI):
            ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
            for path in re.findall(r"=> (/\S+)", ldd.stdout):
                # dpkg names files by their /usr path (merged /usr).
                real = os.path.realpath(path)
                owner = subprocess.run(["dpkg", "-S", real], capture_output=True, text=True)
                if owner.returncode != 0:
                    owner = subprocess.run(["dpkg", "-S", path.replace("/usr/lib/", "/lib/")],
                                           capture_output=True, text=True)
                self.assertEqual(owner.returncode, 0, f"no package owns {path} ({binary})")
                needed[owner.stdout.split(":")[0]] = path
        base = {p for p in needed if subprocess.run(
            ["dpkg-query", "-W", "-f=${Priority}", p], capture_output=True,
            text=True).stdout == "required"}
        missing = {p: lib for p, lib in needed.items() if p not in installed and p not in base}
        self.assertEqual(missing, {}, "the runtime stage of the Dockerfile lacks these packages")


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
