"""OpenAI Responses (stateless): wire models (protocol), rendering (render), opening the answer
(serving), routes (router); tool kinds and sealed reasoning beside them."""
