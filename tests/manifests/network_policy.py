"""NetworkPolicy semantics as plain functions: the evaluator the manifest tests use in place of a
CNI, which cannot run here (tested on its own in test_traffic.py).

A pod is isolated in a direction once a policy of its namespace selects it for that direction, and
then admits only what one rule of one such policy allows (any peer of the rule AND any port of it;
an absent list means all). Importable as ``manifests.network_policy`` (pytest pythonpath).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Policy = Mapping[str, Any]

CLIENT_LABEL = "garbage-classifier/inference-client"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicy sees it: its namespace (and that namespace's labels) and labels.

    ``ports`` are the pod's named container ports, for policies that name a port.
    """

    namespace: str
    labels: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)

    def all_namespace_labels(self) -> dict[str, str]:
        """The namespace's labels, with the name label the API server sets on every namespace."""
        return {NAMESPACE_NAME_LABEL: self.namespace, **self.namespace_labels}


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair AND every matchExpression; ``{}`` selects all.

    Raises:
        ValueError: An operator a LabelSelector does not have.
    """
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In":
            ok = key in labels and labels[key] in values
        elif operator == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif operator == "Exists":
            ok = key in labels
        elif operator == "DoesNotExist":
            ok = key not in labels
        else:
            raise ValueError(f"{operator!r} is not a LabelSelector operator")
        if not ok:
            return False
    return True


def peer_matches(peer: Mapping[str, Any], policy_namespace: str, pod: Pod) -> bool:
    """One ``from``/``to`` entry: namespaceSelector AND podSelector when both are in one entry.

    Without a namespaceSelector the peer is in the policy's own namespace; without a podSelector
    it is every pod of the selected namespaces.

    Raises:
        ValueError: An ipBlock peer (this project has none; the evaluator does not model it).
    """
    if "ipBlock" in peer:
        raise ValueError("ipBlock peers are not modelled: extend peer_matches to check them")
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = pod.namespace == policy_namespace
    else:
        in_namespace = selector_matches(namespaces, pod.all_namespace_labels())
    return in_namespace and selector_matches(peer.get("podSelector") or {}, pod.labels)


def port_matches(rule_port: Mapping[str, Any], port: int, protocol: str, target: Pod) -> bool:
    """One ``ports`` entry: the protocol (TCP unless set) and the port, a range with endPort.

    A named port is the destination pod's container port of that name; no port means all.
    """
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    value = rule_port.get("port")
    if value is None:
        return True
    if isinstance(value, str):
        if value not in target.ports:
            return False
        value = target.ports[value]
    return value <= port <= rule_port.get("endPort", value)


def policy_types(policy: Policy) -> set[str]:
    """``policyTypes``, or its default: Ingress, plus Egress when the policy has egress rules."""
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress", *(["Egress"] if "egress" in spec else [])}


def _selecting(policies: Iterable[Policy], pod: Pod, direction: str) -> list[Policy]:
    return [
        p
        for p in policies
        if p["kind"] == "NetworkPolicy"
        and p["metadata"]["namespace"] == pod.namespace
        and direction in policy_types(p)
        and selector_matches(p["spec"].get("podSelector") or {}, pod.labels)
    ]


def _admitted(
    policies: Iterable[Policy],
    isolated: Pod,
    other: Pod,
    target: Pod,
    port: int,
    protocol: str,
    direction: str,
) -> bool:
    selecting = _selecting(policies, isolated, direction)
    if not selecting:
        return True  # not isolated: everything is allowed
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        namespace = policy["metadata"]["namespace"]
        for rule in policy["spec"].get(rules_key) or []:
            peers, ports = rule.get(peers_key), rule.get("ports")
            if (not peers or any(peer_matches(p, namespace, other) for p in peers)) and (
                not ports or any(port_matches(p, port, protocol, target) for p in ports)
            ):
                return True
    return False


def ingress_allowed(
    policies: Iterable[Policy], source: Pod, target: Pod, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``target``'s ingress policies admit ``source`` on ``port``."""
    return _admitted(policies, target, source, target, port, protocol, "Ingress")


def egress_allowed(
    policies: Iterable[Policy], source: Pod, target: Pod, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``source``'s egress policies let it open ``port`` on ``target``."""
    return _admitted(policies, source, target, target, port, protocol, "Egress")


def connection_allowed(
    policies: Iterable[Policy], source: Pod, target: Pod, port: int, protocol: str = "TCP"
) -> bool:
    """Both ends agree: the source's egress and the target's ingress (policies of other
    namespaces than the rendered ones are not known here: such pods count as not isolated)."""
    policies = list(policies)
    return egress_allowed(policies, source, target, port, protocol) and ingress_allowed(
        policies, source, target, port, protocol
    )
