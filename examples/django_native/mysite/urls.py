from catalog import views
from django.contrib import admin
from django.urls import path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("items/<int:pk>", views.item),
    path("orders", views.orders),
    path("report", views.report),
    path("inventory", views.inventory),
    path("events", views.events),
    path("health", views.health),
]
