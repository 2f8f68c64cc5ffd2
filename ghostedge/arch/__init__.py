"""The network code of each GhostNet family member (V1, V2, V3), with timm's module and key names; which
families exist and how each is recognised, loaded and deployed is ``model.ARCHITECTURES``."""
