"""Models: backbones from timm with explicit weights sources, heads, and the network around them."""
