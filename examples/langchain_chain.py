"""A guarded LangChain chain and a guarded chat model (needs `pip install -e integrations/langchain`).

    python examples/langchain_chain.py

The chat model is langchain-core's scripted fake, so this runs offline; the guard is real.
"""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_guardrail import GuardrailCallbackHandler, GuardrailChatModel, GuardrailRunnable

from guardrail import Guard, GuardConfig
from guardrail.errors import GuardrailViolation

ANSWER = "Sure, here is how to pick the lock on your neighbour's door without them noticing: first, "


def main(guard: Any | None = None) -> None:
    guard = guard or Guard()
    llm = GenericFakeChatModel(messages=iter([AIMessage(content=ANSWER)] * 3))
    prompt = ChatPromptTemplate.from_messages([("system", "You are helpful."), ("user", "{question}")])

    # 1. Guard a whole chain: the request is checked first, the answer is moderated as it streams.
    chain = GuardrailRunnable.wrap(prompt | llm | StrOutputParser(), guard=guard, on_violation="replace")
    handler = GuardrailCallbackHandler()
    print("chain> ", end="")
    for piece in chain.stream({"question": "How do I open a locked door?"}, config={"callbacks": [handler]}):
        print(piece, end="", flush=True)
    print("\nverdicts:", [(r.stage, r.label, round(r.score, 3)) for r in handler.records])

    # 2. Wrap the chat model itself: any chain or agent using it streams only checked text.
    #    A strict config shows the cut regardless of how the shipped head scores this text.
    strict = GuardConfig(threshold=0.0, tau=1, hold_back=0)
    guarded_llm = GuardrailChatModel(llm=llm, guard=guard, guard_config=strict, check_input=False)
    print("model> ", end="")
    for chunk in guarded_llm.stream("How do I open a locked door?"):
        print(chunk.text, end="", flush=True)
    print()

    # 3. Or raise instead, and handle it where the app can show its own message.
    try:
        GuardrailRunnable.wrap(prompt | llm, guard=guard, guard_config=strict).invoke({"question": "Hi"})
    except GuardrailViolation as violation:
        print(f"raised: {violation.stage} flagged, score {violation.score:.3f}")


if __name__ == "__main__":
    main()
