"""erc-stream escalations: conversation-level alerts computed from the emotion stream.

A faust-streaming app (:mod:`erc_stream.escalations.app`) consumes ``chat.emotions``, keeps each
conversation's state in a changelog-backed table and emits escalations opened / resolved to
``chat.escalations``. The rules (:mod:`~erc_stream.escalations.rules`) and the state step
(:mod:`~erc_stream.escalations.state`) are pure and tested without a broker. See
docs/escalations.md.
"""
