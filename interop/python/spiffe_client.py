"""Workload API interop: py-spiffe (PyPI `spiffe`, nobody here wrote it) against `mayfly agent`.

Usage: spiffe_client.py SOCKET AUDIENCE
Prints one JSON object with what it fetched, or {"error": TYPE, "detail": ...} and exits 3.
"""
import json
import sys

from spiffe import WorkloadApiClient


def main() -> int:
    socket, audience = sys.argv[1], sys.argv[2]
    client = WorkloadApiClient(socket_path="unix://" + socket, default_timeout=10)
    try:
        svid = client.fetch_x509_svid()
        bundles = client.fetch_x509_bundles()
        jwt = client.fetch_jwt_svid(audience={audience})
        jwt_bundles = client.fetch_jwt_bundles()
        validated = client.validate_jwt_svid(jwt.token, audience)
    except Exception as e:  # the test asserts on the type name
        print(json.dumps({"error": type(e).__name__, "detail": str(e)}))
        return 3
    td = svid.spiffe_id.trust_domain
    x509_bundle = bundles.get_bundle_for_trust_domain(td)
    jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(td)
    print(
        json.dumps(
            {
                "x509_spiffe_id": str(svid.spiffe_id),
                "x509_chain_len": len(svid.cert_chain),
                "x509_authorities": len(x509_bundle.x509_authorities) if x509_bundle else 0,
                "jwt_spiffe_id": str(jwt.spiffe_id),
                "jwt_audience": sorted(jwt.audience),
                "jwt_authorities": len(jwt_bundle.jwt_authorities) if jwt_bundle else 0,
                "validated_spiffe_id": str(validated.spiffe_id),
            }
        )
    )
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
