"""Learned message screening: frozen multilingual sentence embeddings plus a small linear head.

It sits beside the phrase rules in :mod:`chat.moderation`, never instead of them: the rules are
exact and explainable, the head catches indirect wording (burden, farewell, hoarded medication)
and languages the rule lists do not cover.  Runtime needs numpy and the embedder package only;
scikit-learn is needed by :mod:`chat.screening.train` alone.
"""
