"""Who may associate with the listener: an AE title AND where it calls from.

`MEDREGA_LISTENER_ALLOWED_PEERS` lists entries `AE@WHERE`, comma-separated:
- `ORTHANC@127.0.0.1`, `MODALITY1@10.0.0.0/24`, `PACS@fd00::/64`: an address or a network
  (IPv4 or IPv6; an IPv4 peer reaching an IPv6 socket as `::ffff:a.b.c.d` matches the IPv4 rule);
- `ORTHANC@cn=orthanc.hospital.example`: the peer's TLS client certificate (verified against
  MEDREGA_LISTENER_TLS_CA) names it as subject CN or DNS subjectAltName, wherever it calls from;
- `ORTHANC@*`: any address (what an AE-title-only rule meant before; say so explicitly).
The calling AE title alone is chosen by the peer and proves nothing; the address (or the
certificate) is what a peer cannot pick.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Why the listener refused an association (listener_refusals.reason, the metric's label).
REFUSED_PEER = "peer_not_allowed"
REFUSED_STORAGE_LOW = "storage_low"
REFUSED_SCREENING_FAILED = "screening_failed"
REFUSAL_REASONS = (REFUSED_PEER, REFUSED_STORAGE_LOW, REFUSED_SCREENING_FAILED)


@dataclass(frozen=True)
class PeerRule:
    ae_title: str
    network: Network | None = None  # None with cert_cn None: any address
    cert_cn: str | None = None

    def __str__(self) -> str:
        where = f"cn={self.cert_cn}" if self.cert_cn else str(self.network or "*")
        return f"{self.ae_title}@{where}"


def parse_peer(text: str) -> PeerRule:
    """One `AE@WHERE` entry; ValueError naming the entry when it is malformed."""
    ae_title, at, where = text.strip().rpartition("@")
    ae_title = ae_title.strip()
    where = where.strip()
    if not at:
        raise ValueError(f"allowed peer {text!r} must be AE@address, AE@network or AE@cn=NAME")
    if not 0 < len(ae_title) <= 16 or "\\" in ae_title:
        raise ValueError(f"allowed peer {text!r}: AE title must be 1-16 characters")
    if where == "*":
        return PeerRule(ae_title)
    if where.lower().startswith("cn="):
        name = where[3:].strip()
        if not name:
            raise ValueError(f"allowed peer {text!r}: empty certificate name")
        return PeerRule(ae_title, cert_cn=name.lower())
    try:
        return PeerRule(ae_title, network=ipaddress.ip_network(where, strict=False))
    except ValueError:
        raise ValueError(f"allowed peer {text!r}: {where!r} is not an address or network") from None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def certificate_names(peer_certificate: dict[str, Any] | None) -> set[str]:
    """Subject CNs and DNS subjectAltNames of a verified peer certificate (ssl.getpeercert())."""
    if not peer_certificate:
        return set()
    names = {
        value.lower()
        for rdn in peer_certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    }
    names |= {
        value.lower() for kind, value in peer_certificate.get("subjectAltName", ()) if kind == "DNS"
    }
    return names


def admits(
    rules: tuple[PeerRule, ...],
    calling_ae: str,
    remote_addr: str,
    peer_certificate: dict[str, Any] | None = None,
) -> bool:
    """Whether some rule admits this calling AE from this address (and certificate)."""
    address = _address(remote_addr)
    names: set[str] | None = None
    for rule in rules:
        if rule.ae_title != calling_ae:
            continue
        if rule.cert_cn is not None:
            if names is None:
                names = certificate_names(peer_certificate)
            if rule.cert_cn in names:
                return True
        elif rule.network is None:
            return True
        elif address is not None and address.version == rule.network.version:
            if address in rule.network:
                return True
    return False
