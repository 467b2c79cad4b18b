"""Prompts shared by the engine tests and benchmarks: varied lengths and topics."""

CHAT_PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "List three uses of copper.",
    "What is the capital of Japan, and what is it known for?",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue? Answer briefly.",
    "Translate 'good morning, how are you?' into French and Spanish.",
]
