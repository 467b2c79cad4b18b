"""Labelled free-form requests about a document, for intent detection
(SlimLM's Table 13 setup): SUMMARIZE, SUGGEST (suggest questions), ANSWER (a
question about the document) or OTHER.

CASES was written before the keyword rules and then used to tune them, so
the rules' accuracy on it is optimistic. HELD_OUT was written at the same time
and never used for tuning: report both."""

from __future__ import annotations

CASES: tuple[tuple[str, str], ...] = (
    # summarize
    ("Summarize this document.", "SUMMARIZE"),
    ("Can you give me a quick summary?", "SUMMARIZE"),
    ("tl;dr", "SUMMARIZE"),
    ("What is this document about?", "SUMMARIZE"),
    ("Give me the gist of it in two sentences.", "SUMMARIZE"),
    ("What are the key takeaways?", "SUMMARIZE"),
    ("Sum it up for me", "SUMMARIZE"),
    ("I don't have time to read all of this, what's the short version?", "SUMMARIZE"),
    ("Write a brief overview of the report", "SUMMARIZE"),
    ("Condense the main points into a few bullets", "SUMMARIZE"),
    ("summarise pls", "SUMMARIZE"),
    ("Recap the presentation for my manager.", "SUMMARIZE"),
    # suggest questions
    ("Suggest some questions I could ask about this.", "SUGGEST"),
    ("What questions should I ask about this document?", "SUGGEST"),
    ("Give me 3 questions about the file", "SUGGEST"),
    ("Generate quiz questions from this text.", "SUGGEST"),
    ("What could I ask to understand this better?", "SUGGEST"),
    ("Come up with a few good questions for the meeting based on this report", "SUGGEST"),
    ("List questions a reader might have", "SUGGEST"),
    ("Help me prepare questions for the author.", "SUGGEST"),
    ("Any questions worth asking here?", "SUGGEST"),
    ("Propose discussion questions for the team", "SUGGEST"),
    ("What should I be asking about this contract?", "SUGGEST"),
    ("Quiz me on this chapter", "SUGGEST"),
    # answer a question about the document
    ("When does the library reopen?", "ANSWER"),
    ("How much does the renovation cost?", "ANSWER"),
    ("Who is the library director?", "ANSWER"),
    ("Where will the temporary library be?", "ANSWER"),
    ("Is the cafe on the ground floor?", "ANSWER"),
    ("What year did the building open", "ANSWER"),
    ("Does the plan include solar panels?", "ANSWER"),
    ("Tell me who pays for the work.", "ANSWER"),
    ("Which street is the old post office on?", "ANSWER"),
    ("How much less energy will the new building use?", "ANSWER"),
    ("Explain why the library is closing", "ANSWER"),
    ("According to the document, when is the public meeting?", "ANSWER"),
    # other
    ("Translate this into Spanish.", "OTHER"),
    ("Write an email to my team announcing the renovation.", "OTHER"),
    ("Rewrite the first paragraph in a friendlier tone", "OTHER"),
    ("Tell me a joke", "OTHER"),
    ("What's the weather like today?", "OTHER"),
    ("Fix the grammar in the second paragraph.", "OTHER"),
    ("Draft a tweet about the new cafe", "OTHER"),
    ("Hello!", "OTHER"),
    ("Convert the table into CSV", "OTHER"),
    ("Make it sound more formal.", "OTHER"),
    ("Write a poem inspired by this", "OTHER"),
    ("Thanks, that's all.", "OTHER"),
)

HELD_OUT: tuple[tuple[str, str], ...] = (
    ("Could you boil this down for me?", "SUMMARIZE"),
    ("Give me an executive summary", "SUMMARIZE"),
    ("In a nutshell, what does it say?", "SUMMARIZE"),
    ("Highlights please", "SUMMARIZE"),
    ("I need some questions to test my understanding", "SUGGEST"),
    ("What are good follow-up questions?", "SUGGEST"),
    ("Create five interview questions from this", "SUGGEST"),
    ("Brainstorm questions for a Q&A session", "SUGGEST"),
    ("Who approved the plan?", "ANSWER"),
    ("How long will the library be closed?", "ANSWER"),
    ("Can residents still borrow books?", "ANSWER"),
    ("what's the budget", "ANSWER"),
    ("Paraphrase the last sentence", "OTHER"),
    ("Compose a letter to the council supporting the plan", "OTHER"),
    ("Good morning", "OTHER"),
    ("Turn this into a press release", "OTHER"),
)
