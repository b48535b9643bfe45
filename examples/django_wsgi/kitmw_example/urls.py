from django.urls import path

from . import views

urlpatterns = [
    path("items/<int:pk>", views.item),
    path("events", views.events),
    path("health", views.health),
]
