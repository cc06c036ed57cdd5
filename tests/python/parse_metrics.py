"""Parses a Prometheus text exposition from stdin with prometheus_client's parser.

Prints the samples as JSON, one object per sample: {"family", "type", "name", "labels",
"value"}. Exits 1 with the parser's error on stderr when the exposition is malformed, so that
the end-to-end tests (tests/tests/observability.rs) fail on a bad /metrics. Not a pytest
module: the Rust tests run it with $NSQ_SUITE_PYTHON.
"""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    samples = []
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                value = s.value
                if math.isnan(value) or math.isinf(value):
                    value = str(value)
                samples.append(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": s.name,
                        "labels": dict(s.labels),
                        "value": value,
                    }
                )
    except ValueError as e:
        print(f"malformed Prometheus exposition: {e}", file=sys.stderr)
        return 1
    json.dump(samples, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
