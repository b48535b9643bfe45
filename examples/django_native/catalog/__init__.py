"""The project's own app: views as users write them, kitmw needs nothing from them."""
