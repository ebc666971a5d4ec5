from django.urls import path

from . import views

urlpatterns = [
    path("hello/<str:name>", views.hello),
    path("items/<int:item_id>", views.ItemView.as_view()),
    path("greeting", views.greeting),
    path("form", views.form),
    path("stream", views.stream),
    path("file", views.file),
]
