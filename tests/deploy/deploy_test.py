#!/usr/bin/python3
"""Checks deploy/ against the real moe-routerd, so the files cannot drift:

- Prometheus: promtool accepts the config and rules, and the rules' unit
  tests (deploy/prometheus/rules_test.yml) pass.
- moe-routerd starts on the Kubernetes ConfigMap's models.json, and every
  metric the rules and the Grafana dashboard query is in its /metrics.
- Every flag the StatefulSet passes is a flag moe-routerd has; the probes,
  Envoy's upstream and Prometheus' target use the ports those flags set.

    deploy_test.py DEPLOY_DIR MOE_ROUTERD PROMTOOL
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest
import urllib.request

import yaml

DEPLOY, ROUTERD, PROMTOOL = sys.argv[1:4]


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
        # The kubelet's SIGKILL must not cut the drain short.
        drain = int(flags["drain_timeout"].rstrip("s"))
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
        self.assertEqual(cluster["health_checks"][0]["grpc_health_check"]["service_name"],
                         "readiness")

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


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
