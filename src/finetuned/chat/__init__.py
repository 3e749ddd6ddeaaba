"""Talking to a model: a conversation rendered as training renders it, answers generated (and streamed).

    Conversation(tokenizer, system)   the history; `prompt_ids()` is what the model reads next
    Sampling                          greedy by default, or temperature / top-p / top-k
    reply(model, tokenizer, ids, ...) one answer, whole (the worker, the answerer)
    stream(model, tokenizer, ids, ...) one answer, piece by piece (`finetuned chat`)
    talk(...)                         the terminal's loop: a line in, an answer out, /reset, /exit
"""
