"""Validate Home Assistant MQTT discovery payloads with Home Assistant's own schemas.

Run with the Python of the Home Assistant venv (scripts/ha-test does):

    mosquitto_sub -t 'homeassistant/+/+/+/config' -W 3 -F '%t %x' | python validate_discovery.py [prefix]

Each input line is `<topic> <payload as hex>` (mosquitto_sub -F '%t %x'). Each payload goes
through what homeassistant.components.mqtt.discovery does to it before an entity is made
(the topic matcher, abbreviation expansion, the origin schema, `~` base topics) and then through
the platform's DISCOVERY_SCHEMA (homeassistant.components.mqtt.<component>), the schema Home
Assistant applies to a discovered entity. DISCOVERY_SCHEMA silently drops keys it does not know
(vol.REMOVE_EXTRA): those are reported as "ignored". The platform's PLATFORM_SCHEMA_MODERN (the
YAML schema, extra keys refused) is applied too and its verdict reported, for information.

Prints one JSON object per payload: {"topic", "component", "object", "valid", "error",
"ignored", "strict_error"}; exits 1 when a payload is invalid.
"""

import importlib
import json
import sys

from homeassistant.components.mqtt import discovery as d
from homeassistant.components.mqtt.abbreviations import (
    ABBREVIATIONS,
    DEVICE_ABBREVIATIONS,
    ORIGIN_ABBREVIATIONS,
)


def expand(payload: dict) -> dict:
    """What discovery.async_discovery_message_received does to a payload (2024.3.3)."""
    payload = {ABBREVIATIONS.get(k, k): v for k, v in payload.items()}
    if isinstance(payload.get("device"), dict):
        payload["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in payload["device"].items()}
    if "origin" in payload:
        origin = payload["origin"]
        if not isinstance(origin, dict):
            raise ValueError(f"origin is not an object: {origin!r}")
        payload["origin"] = {ORIGIN_ABBREVIATIONS.get(k, k): v for k, v in origin.items()}
        d.MQTT_ORIGIN_INFO_SCHEMA(payload["origin"])
    if isinstance(payload.get("availability"), list):
        payload["availability"] = [
            {ABBREVIATIONS.get(k, k): v for k, v in a.items()} if isinstance(a, dict) else a
            for a in payload["availability"]
        ]
    if "~" in payload:
        base = payload.pop("~")
        for key, value in list(payload.items()):
            if isinstance(value, str) and value and key.endswith("topic"):
                if value[0] == "~":
                    payload[key] = f"{base}{value[1:]}"
                if value[-1] == "~":
                    payload[key] = f"{value[:-1]}{base}"
    payload["platform"] = "mqtt"
    return payload


def check(topic: str, raw: bytes, prefix: str) -> dict:
    out = {"topic": topic, "component": None, "object": None, "valid": False, "error": None,
           "ignored": [], "strict_error": None}
    trimmed = topic.replace(f"{prefix}/", "", 1)
    match = d.TOPIC_MATCHER.match(trimmed)
    if not match:
        out["error"] = "illegal discovery topic (Home Assistant ignores it)"
        return out
    component, node, obj = match.groups()
    out["component"], out["object"] = component, f"{node} {obj}" if node else obj
    if component not in d.SUPPORTED_COMPONENTS:
        out["error"] = f"component {component} not supported by Home Assistant's MQTT"
        return out
    if not raw:
        out["valid"] = True
        out["error"] = "empty payload (removal)"
        return out
    try:
        payload = json.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
        payload = expand(payload)
    except Exception as e:  # noqa: BLE001 - reported
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    try:
        validated = module.DISCOVERY_SCHEMA(dict(payload))
        out["valid"] = True
        out["ignored"] = sorted(set(payload) - set(validated) - {"platform"})
    except Exception as e:  # noqa: BLE001 - vol.Invalid and friends, reported
        out["error"] = f"{type(e).__name__}: {e}"
    strict = getattr(module, "PLATFORM_SCHEMA_MODERN", None)
    if strict is not None:
        try:
            strict({k: v for k, v in payload.items() if k != "platform"})
        except Exception as e:  # noqa: BLE001
            out["strict_error"] = f"{type(e).__name__}: {e}"
    return out


def main() -> int:
    prefix = sys.argv[1] if len(sys.argv) > 1 else "homeassistant"
    bad = 0
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        topic, _, hexpayload = line.partition(" ")
        result = check(topic, bytes.fromhex(hexpayload.strip()), prefix)
        bad += not result["valid"]
        print(json.dumps(result), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
