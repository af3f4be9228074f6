"""Proto package ``nmtserve``: one subpackage per API version (``v1``)."""
