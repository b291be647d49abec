"""``ki2api deploy``: publish the gateway as a Hugging Face Space."""
