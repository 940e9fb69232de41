"""nfc: compile YAML firewall policy into atomic nftables or iptables rulesets."""

__version__ = "0.1.0"
